"""Endpoints that really serve: each production variant runs local model-server processes that
follow SageMaker's inference container contract (GET /ping, POST /invocations on
SAGEMAKER_BIND_TO_PORT), chosen by image from a table of regex -> command (`model_servers`).
`Endpoints` keeps each endpoint's status, deploys a config's variants (and, on an update, switches
invocations over once the new servers are healthy), and routes invocations by variant weight."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time

from llama_operator.local.sagemaker import imageenv, names
from llama_operator.local.sagemaker.context import Context
from llama_operator.local.sagemaker.errors import ModelError, ValidationError
from llama_operator.local.sagemaker.model_servers import (
    DEFAULT_HEALTH_TIMEOUT,
    DeployFailed,
    Deployment,
    ModelServers,
    Variant,
    primary_container,
    wait_healthy,
)

log = logging.getLogger(__name__)

KIND = "endpoint"


class Endpoints:
    def __init__(self, ctx: Context, containers: list[tuple[str, str]],
                 images: imageenv.ImageEnvironments | None = None):
        self.ctx = ctx
        self.servers = ModelServers(ctx, containers, images or imageenv.ImageEnvironments())
        self.active: dict[str, Deployment] = {}
        self._starting: dict[str, list[Deployment]] = {}
        self._lock = threading.Lock()
        self._closing = False

    # status bookkeeping --------------------------------------------------------------------
    def _set(self, name: str, status: str, **fields) -> None:
        with self.ctx.store.lock:
            record = self.ctx.store.get(KIND, name)
            if record is None:
                return
            d = record["describe"]
            changed = d.get("EndpointStatus") != status or "FailureReason" in fields
            d["EndpointStatus"] = status
            if fields.get("FailureReason"):
                reason = fields["FailureReason"]
                fields["FailureReason"] = reason if len(reason) <= 1024 else reason[:1021] + "..."
            for k, v in fields.items():
                if v is None:
                    d.pop(k, None)
                else:
                    d[k] = v
            d["LastModifiedTime"] = time.time()
            self.ctx.store.put(KIND, record)
            snapshot = json.loads(json.dumps(d))
        if changed:
            self.ctx.emit(KIND, name, snapshot)

    def _variants_status(self, config: dict, dep: Deployment) -> list[dict]:
        out = []
        models = {}
        for pv in config["describe"]["ProductionVariants"]:
            model = models.setdefault(pv["ModelName"], self.ctx.store.get("model", pv["ModelName"]))
            image = primary_container(model).get("Image", "") if model else ""
            count = next((len(v.servers) for v in dep.variants if v.name == pv["VariantName"]), 0)
            out.append({
                "VariantName": pv["VariantName"],
                "DeployedImages": [{"SpecifiedImage": image, "ResolvedImage": image, "ResolutionTime": time.time()}],
                "CurrentWeight": float(pv.get("InitialVariantWeight", 1.0)),
                "DesiredWeight": float(pv.get("InitialVariantWeight", 1.0)),
                "CurrentInstanceCount": count,
                "DesiredInstanceCount": int(pv.get("InitialInstanceCount", 1)),
            })
        return out

    # lifecycle -----------------------------------------------------------------------------
    def create(self, name: str, *, reuse_model_data: bool = False) -> None:
        threading.Thread(target=self._create, args=(name, reuse_model_data), daemon=True,
                         name=f"endpoint-{name}").start()

    def _create(self, name: str, reuse: bool) -> None:
        config_name = self.ctx.store.get(KIND, name)["describe"]["EndpointConfigName"]
        try:
            dep = self._deploy(name, config_name, reuse)
        except DeployFailed as exc:
            self._set(name, "Failed", FailureReason=str(exc))
            return
        if not self._still_wanted(name, dep):
            return
        with self._lock:
            self.active[name] = dep
        config = self.ctx.store.get("endpoint-config", config_name)
        self._set(name, "InService", ProductionVariants=self._variants_status(config, dep))

    def _still_wanted(self, name: str, dep: Deployment) -> bool:
        """False (and the new servers stopped) when the endpoint was deleted while they started."""
        record = self.ctx.store.get(KIND, name)
        if record is None or record["describe"]["EndpointStatus"] == "Deleting" or self._closing:
            dep.stop()
            return False
        return True

    def update(self, name: str, new_config: str) -> None:
        threading.Thread(target=self._update, args=(name, new_config), daemon=True,
                         name=f"endpoint-update-{name}").start()

    def _update(self, name: str, new_config: str) -> None:
        try:
            dep = self._deploy(name, new_config, False)
        except DeployFailed as exc:
            # SageMaker rolls back: the endpoint keeps serving the old config and reports why.
            self._set(name, "InService", FailureReason=f"Failed to update endpoint: {exc}")
            return
        if not self._still_wanted(name, dep):
            return
        with self._lock:
            old = self.active.get(name)
            self.active[name] = dep   # the switch: invocations from now on go to the new servers
        config = self.ctx.store.get("endpoint-config", new_config)
        self._set(name, "InService", EndpointConfigName=new_config, FailureReason=None,
                  ProductionVariants=self._variants_status(config, dep))
        if old:
            old.stop()

    def delete(self, name: str) -> None:
        threading.Thread(target=self._delete, args=(name,), daemon=True, name=f"endpoint-del-{name}").start()

    def _delete(self, name: str) -> None:
        with self._lock:
            dep = self.active.pop(name, None)
            starting = self._starting.pop(name, [])
        for d in [dep, *starting]:
            if d:
                d.stop()
        self.ctx.store.delete(KIND, name)

    def recover(self) -> None:
        for record in self.ctx.store.all(KIND):
            status = record["describe"]["EndpointStatus"]
            if status == "Deleting":
                self.delete(record["name"])
            elif status in ("InService", "Creating", "Updating", "SystemUpdating"):
                # Its servers died with the service: SystemUpdating (SageMaker's status for
                # platform-side work) until they answer again. An update in flight is lost; the
                # endpoint comes back on the config it was serving.
                self._set(record["name"], "Creating" if status == "Creating" else "SystemUpdating")
                self.create(record["name"], reuse_model_data=True)

    def shutdown(self) -> None:
        self._closing = True
        with self._lock:
            deps = list(self.active.values()) + [d for ds in self._starting.values() for d in ds]
        for dep in deps:
            dep.kill()

    # deployments ---------------------------------------------------------------------------
    def _deploy(self, name: str, config_name: str, reuse: bool) -> Deployment:
        config = self.ctx.store.get("endpoint-config", config_name)
        if config is None:
            raise DeployFailed(f"endpoint configuration {config_name!r} no longer exists")
        dep = Deployment(config=config_name, variants=[])
        with self._lock:
            self._starting.setdefault(name, []).append(dep)
        try:
            for pv in config["describe"]["ProductionVariants"]:
                variant = Variant(pv["VariantName"], float(pv.get("InitialVariantWeight", 1.0)))
                dep.variants.append(variant)
                self.servers.start_variant(self.ctx.store.dir(KIND, name), config_name, pv, variant, reuse)
            for pv, variant in zip(config["describe"]["ProductionVariants"], dep.variants):
                timeout = int(pv.get("ContainerStartupHealthCheckTimeoutInSeconds", DEFAULT_HEALTH_TIMEOUT))
                for server in variant.servers:
                    wait_healthy(server, timeout, variant.name)
            return dep
        except DeployFailed:
            dep.kill()
            raise
        except Exception as exc:
            log.exception("endpoint %s: deployment failed", name)
            dep.kill()
            raise DeployFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            with self._lock:
                lst = self._starting.get(name, [])
                if dep in lst:
                    lst.remove(dep)

    # invocations ---------------------------------------------------------------------------
    def invoke(self, name: str, body: bytes, headers: dict[str, str], target_variant: str | None):
        with self._lock:
            dep = self.active.get(name)
            if dep is not None:
                with dep.cond:
                    dep.inflight += 1
        if dep is None:
            raise ValidationError(f"Endpoint {name} of account {names.ACCOUNT} not found.")
        try:
            variants = [v for v in dep.variants if v.servers]
            if target_variant:
                variants = [v for v in variants if v.name == target_variant]
                if not variants:
                    raise ValidationError(f"Variant {target_variant} not found for endpoint {name}.")
            variant = _pick(variants)
            server = variant.next_server()
            status, resp_headers, data = _post(server.port, body, headers)
            if status >= 400:
                kind = "client" if status < 500 else "server"
                message = data.decode("utf-8", "replace")
                raise ModelError(
                    f"Received {kind} error ({status}) from primary with message \"{message}\". "
                    f"See the endpoint's logs (llama-operator logs {name} --endpoint) for more information.",
                    extra={"OriginalStatusCode": status, "OriginalMessage": message,
                           "LogStreamArn": names.log_stream_arn(self.ctx.region, name)},
                )
            return variant.name, resp_headers, data
        finally:
            with dep.cond:
                dep.inflight -= 1
                dep.cond.notify_all()


def _pick(variants: list[Variant]) -> Variant:
    import random

    total = sum(v.weight for v in variants)
    if total <= 0:
        return variants[0]
    x = random.uniform(0, total)
    for v in variants:
        x -= v.weight
        if x <= 0:
            return v
    return variants[-1]


def _post(port: int, body: bytes, headers: dict[str, str]):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/invocations", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    except OSError as exc:
        raise ModelError(f"Received server error (0) from primary with message \"{exc}\".",
                         extra={"OriginalStatusCode": 500, "OriginalMessage": str(exc)}) from exc
    finally:
        conn.close()
