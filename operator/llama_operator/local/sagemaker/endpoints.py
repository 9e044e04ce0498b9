"""Endpoints that really serve: each production variant runs local model-server processes that
follow SageMaker's inference container contract (GET /ping, POST /invocations on
SAGEMAKER_BIND_TO_PORT), chosen by image from a table of regex -> command (`model_servers`).
`Endpoints` keeps each endpoint's status, deploys a config's variants (and, on an update, switches
invocations over once the new servers are healthy), routes invocations by variant weight and counts
them per variant (the autoscaler's metric), and scales a running variant's instance count
(UpdateEndpointWeightsAndCapacities, and the autoscaler through it): new servers take traffic once
they pass /ping, removed ones are drained first. A variant without ModelName starts no server: its
instances belong to inference components (components.py), which report its instance count."""

from __future__ import annotations

import collections
import copy
import http.client
import json
import logging
import threading
import time

from llama_operator.local.sagemaker import imageenv, names
from llama_operator.local.sagemaker.context import Context
from llama_operator.local.sagemaker.errors import ModelError, RuntimeValidationError, ValidationError
from llama_operator.local.sagemaker.model_servers import (
    DEFAULT_HEALTH_TIMEOUT,
    DeployFailed,
    Deployment,
    ModelServers,
    Variant,
    kill_group,
    primary_container,
    wait_healthy,
)

log = logging.getLogger(__name__)

KIND = "endpoint"


class Endpoints:
    measures_load = True  # invocations are counted: the autoscaler may act on them

    def __init__(self, ctx: Context, containers: list[tuple[str, str]],
                 images: imageenv.ImageEnvironments | None = None):
        self.ctx = ctx
        self.servers = ModelServers(ctx, containers, images or imageenv.ImageEnvironments())
        self.active: dict[str, Deployment] = {}
        self._starting: dict[str, list[Deployment]] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._invocations: collections.Counter = collections.Counter()  # (endpoint, variant) -> since start
        self._count_lock = threading.Lock()
        # Inference components (components.InferenceComponents), set by the server: the instance
        # counts of variants without a model.
        self.components = None

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

    def _variants_status(self, name: str, config: dict, dep: Deployment) -> list[dict]:
        out = []
        models = {}
        variants = {v.name: v for v in dep.variants}
        for pv in config["describe"]["ProductionVariants"]:
            if not pv.get("ModelName"):  # inference components' instances
                v = variants.get(pv["VariantName"])
                weight = v.weight if v else float(pv.get("InitialVariantWeight", 1.0))
                count = (self.components.instance_counts(name, pv) if self.components is not None
                         else int(pv.get("InitialInstanceCount", 1)))
                out.append({"VariantName": pv["VariantName"], "CurrentWeight": weight, "DesiredWeight": weight,
                            "CurrentInstanceCount": count, "DesiredInstanceCount": count, **_scaling_settings(pv)})
                continue
            model = models.setdefault(pv["ModelName"], self.ctx.store.get("model", pv["ModelName"]))
            image = primary_container(model).get("Image", "") if model else ""
            v = variants.get(pv["VariantName"])
            weight = v.weight if v else float(pv.get("InitialVariantWeight", 1.0))
            out.append({
                "VariantName": pv["VariantName"],
                "DeployedImages": [{"SpecifiedImage": image, "ResolvedImage": image, "ResolutionTime": time.time()}],
                "CurrentWeight": weight,
                "DesiredWeight": v.desired_weight if v and v.desired_weight is not None else weight,
                "CurrentInstanceCount": v.count() if v else 0,
                "DesiredInstanceCount": v.desired if v else int(pv.get("InitialInstanceCount", 1)),
                **_scaling_settings(pv),
            })
        return out

    # lifecycle -----------------------------------------------------------------------------
    def create(self, name: str, *, reuse_model_data: bool = False) -> None:
        threading.Thread(target=self._create, args=(name, reuse_model_data), daemon=True,
                         name=f"endpoint-{name}").start()

    def _create(self, name: str, reuse: bool) -> None:
        describe = self.ctx.store.get(KIND, name)["describe"]
        config_name = describe["EndpointConfigName"]
        # A recovered endpoint comes back at the counts and weights it had (scaling included).
        retain = retained_properties(describe) if reuse else None
        try:
            dep = self._deploy(name, config_name, reuse, retain)
        except DeployFailed as exc:
            self._set(name, "Failed", FailureReason=str(exc))
            return
        if not self._still_wanted(name, dep):
            return
        with self._lock:
            self.active[name] = dep
        config = self.ctx.store.get("endpoint-config", config_name)
        self._set(name, "InService", ProductionVariants=self._variants_status(name, config, dep))

    def _still_wanted(self, name: str, dep: Deployment) -> bool:
        """False (and the new servers stopped) when the endpoint was deleted while they started."""
        record = self.ctx.store.get(KIND, name)
        if record is None or record["describe"]["EndpointStatus"] == "Deleting" or self._closing:
            dep.stop()
            return False
        return True

    def update(self, name: str, new_config: str, retain: dict[str, dict] | None = None) -> None:
        """`retain`: variant -> {"count", "weight"} kept from the running endpoint instead of the new
        config's initial values (UpdateEndpoint's RetainAllVariantProperties)."""
        threading.Thread(target=self._update, args=(name, new_config, retain), daemon=True,
                         name=f"endpoint-update-{name}").start()

    def _update(self, name: str, new_config: str, retain: dict[str, dict] | None = None) -> None:
        try:
            dep = self._deploy(name, new_config, False, retain)
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
                  ProductionVariants=self._variants_status(name, config, dep))
        if self.components is not None:
            self.components.endpoint_updated(name)
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
        if self.components is not None:
            self.components.endpoint_deleted(name)
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
    def _deploy(self, name: str, config_name: str, reuse: bool,
                retain: dict[str, dict] | None = None) -> Deployment:
        config = self.ctx.store.get("endpoint-config", config_name)
        if config is None:
            raise DeployFailed(f"endpoint configuration {config_name!r} no longer exists")
        dep = Deployment(config=config_name, variants=[])
        with self._lock:
            self._starting.setdefault(name, []).append(dep)
        try:
            for pv in config["describe"]["ProductionVariants"]:
                kept = (retain or {}).get(pv["VariantName"], {})
                weight = kept.get("weight")
                variant = Variant(pv["VariantName"],
                                  float(pv.get("InitialVariantWeight", 1.0) if weight is None else weight))
                dep.variants.append(variant)
                if not pv.get("ModelName"):  # instances for inference components: nothing runs yet
                    continue
                self.servers.start_variant(self.ctx.store.dir(KIND, name), config_name, pv, variant, reuse,
                                           count=kept.get("count"))
            for pv, variant in zip(config["describe"]["ProductionVariants"], dep.variants):
                for server in variant.snapshot():
                    wait_healthy(server, _health_timeout(pv), variant.name)
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

    # scaling -------------------------------------------------------------------------------
    def invocations(self, name: str, variant: str) -> int:
        """Invocations routed to the variant since the service started (the autoscaler's metric)."""
        with self._count_lock:
            return self._invocations[(name, variant)]

    def current_count(self, name: str, variant: str) -> int | None:
        with self._lock:
            dep = self.active.get(name)
        v = next((v for v in dep.variants if v.name == variant), None) if dep else None
        return v.count() if v else None

    def scale_variant(self, name: str, variant: str, count: int, on_done=None) -> None:
        self.update_weights_and_capacities(name, {variant: {"DesiredInstanceCount": count}}, on_done)

    def update_weights_and_capacities(self, name: str, changes: dict[str, dict], on_done=None) -> None:
        """`changes`: variant -> {"DesiredInstanceCount"?, "DesiredWeight"?} (validated by the
        caller). The endpoint is Updating from now (its Describe shows the desired values); a thread
        starts or stops the variants' servers, then sets it InService and calls `on_done(ok,
        message)`. A failure rolls the variant back to what runs (InService with FailureReason)."""
        with self._lock:
            dep = self.active.get(name)
        if dep is None:
            raise ValidationError(f"Endpoint {name} of account {names.ACCOUNT} is not serving.")
        variants = {v.name: v for v in dep.variants}
        for vname, change in changes.items():
            v = variants[vname]
            if change.get("DesiredInstanceCount") is not None:
                v.desired = int(change["DesiredInstanceCount"])
            if change.get("DesiredWeight") is not None:
                v.desired_weight = float(change["DesiredWeight"])
        config = self.ctx.store.get("endpoint-config", dep.config)
        self._set(name, "Updating", FailureReason=None, ProductionVariants=self._variants_status(name, config, dep))
        threading.Thread(target=self._scale, args=(name, dep, [variants[n] for n in changes], on_done),
                         daemon=True, name=f"endpoint-scale-{name}").start()

    def _scale(self, name: str, dep: Deployment, variants: list[Variant], on_done) -> None:
        config = self.ctx.store.get("endpoint-config", dep.config)
        pvs = {pv["VariantName"]: pv for pv in (config or {}).get("describe", {}).get("ProductionVariants", [])}
        errors = []
        for v in variants:
            try:
                self._resize(name, dep, v, _health_timeout(pvs.get(v.name, {})))
            except DeployFailed as exc:
                errors.append(str(exc))
                v.desired = v.count()  # rolled back to what runs
            except Exception as exc:
                log.exception("endpoint %s: scaling variant %s failed", name, v.name)
                errors.append(f"{type(exc).__name__}: {exc}")
                v.desired = v.count()
            if v.desired_weight is not None:
                v.weight, v.desired_weight = v.desired_weight, None
        with self._lock:
            current = self.active.get(name) is dep
        if not current or self._closing:
            if on_done:
                on_done(False, "the endpoint was deleted or updated while it scaled")
            return
        message = "; ".join(errors) or None
        self._set(name, "InService", FailureReason=f"Failed to update endpoint: {message}" if message else None,
                  ProductionVariants=self._variants_status(name, config, dep) if config else None)
        if on_done:
            on_done(message is None, message)

    def _resize(self, name: str, dep: Deployment, v: Variant, health_timeout: int) -> None:
        running = v.count()
        if v.desired > running:
            if v.spawn is None:
                raise DeployFailed(f"variant {v.name} cannot start further instances")
            new = []
            try:
                for _ in range(v.desired - running):
                    new.append(v.spawn())
                for server in new:  # traffic only once healthy
                    wait_healthy(server, health_timeout, v.name)
            except BaseException:
                for server in new:
                    kill_group(server.proc)
                raise
            for server in new:
                v.add(server)
            with self._lock:
                gone = self.active.get(name) is not dep
            if gone:  # stopped meanwhile: it may have missed these
                for server in new:
                    kill_group(server.proc)
        elif v.desired < running:
            v.remove(running - v.desired)

    # invocations ---------------------------------------------------------------------------
    def invoke(self, name: str, body: bytes, headers: dict[str, str], target_variant: str | None):
        with self._lock:
            dep = self.active.get(name)
            if dep is not None:
                with dep.cond:
                    dep.inflight += 1
        if dep is None:
            raise RuntimeValidationError(f"Endpoint {name} of account {names.ACCOUNT} not found.")
        try:
            variants = [v for v in dep.variants if v.count()]
            if target_variant:
                variants = [v for v in variants if v.name == target_variant]
                if not variants:
                    raise RuntimeValidationError(f"Variant {target_variant} not found for endpoint {name}.")
            variant = _pick(variants)
            with self._count_lock:
                self._invocations[(name, variant.name)] += 1
            server = variant.acquire()
            try:
                status, resp_headers, data = _post(server.port, body, headers)
            finally:
                variant.release(server)
            if status >= 400:
                raise model_error(status, data, f"the endpoint's logs (llama-operator logs {name} --endpoint)",
                                  names.log_stream_arn(self.ctx.region, name))
            return variant.name, resp_headers, data
        finally:
            with dep.cond:
                dep.inflight -= 1
                dep.cond.notify_all()


def model_error(status: int, data: bytes, logs: str, log_stream_arn: str) -> ModelError:
    """InvokeEndpoint's ModelError for a container's error answer, as SageMaker words it."""
    kind = "client" if status < 500 else "server"
    message = data.decode("utf-8", "replace")
    return ModelError(f"Received {kind} error ({status}) from primary with message \"{message}\". See {logs} for "
                      "more information.",
                      extra={"OriginalStatusCode": status, "OriginalMessage": message, "LogStreamArn": log_stream_arn})


def retained_properties(describe: dict) -> dict[str, dict]:
    """variant -> {"count", "weight"} of a Describe's ProductionVariants: what RetainAllVariantProperties
    keeps, and what a recovered endpoint comes back with."""
    return {pv["VariantName"]: {"count": pv.get("DesiredInstanceCount"), "weight": pv.get("CurrentWeight")}
            for pv in describe.get("ProductionVariants") or [] if "VariantName" in pv}


def _scaling_settings(pv: dict) -> dict:
    """What DescribeEndpoint repeats of a variant's configuration: managed instance scaling, routing."""
    return {k: copy.deepcopy(pv[k]) for k in ("ManagedInstanceScaling", "RoutingConfig") if k in pv}


def _health_timeout(pv: dict) -> int:
    return int(pv.get("ContainerStartupHealthCheckTimeoutInSeconds", DEFAULT_HEALTH_TIMEOUT))


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
