"""A handle on a `llama-operator local-sagemaker` subprocess, for tests and the demo."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

READY_TIMEOUT = 60
# The service's --autoscaling-period when the caller passes none (unset: the service's default, 60 s).
AUTOSCALING_PERIOD_ENV = "LLAMA_OPERATOR_LOCAL_AUTOSCALING_PERIOD"


class LocalStack:
    def __init__(self, state_dir, *, region: str = "us-east-1", events_queue: str = "llama-operator-events",
                 containers: dict[str, str] | None = None, extra_args=(),
                 autoscaling_period: float | None = None):
        self.state_dir = Path(state_dir)
        self.region = region
        self.events_queue = events_queue
        self.containers = dict(containers or {})
        self.extra_args = list(extra_args)
        if autoscaling_period is None and os.environ.get(AUTOSCALING_PERIOD_ENV):
            autoscaling_period = float(os.environ[AUTOSCALING_PERIOD_ENV])
        self.autoscaling_period = autoscaling_period
        self.env: dict[str, str] = {}
        self.proc: subprocess.Popen | None = None
        self._ports: tuple[int, int] | None = None
        self._stderr = None

    # lifecycle -----------------------------------------------------------------------------
    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "llama_operator", "local-sagemaker", "--host", "127.0.0.1",
               "--state-dir", str(self.state_dir), "--region", self.region, "--events-queue", self.events_queue]
        if self._ports:  # a restart keeps the addresses clients already hold
            cmd += ["--port", str(self._ports[0]), "--moto-port", str(self._ports[1])]
        for regex, command in self.containers.items():
            cmd += ["--container", f"{regex}={command}"]
        if self.autoscaling_period is not None:
            cmd += ["--autoscaling-period", str(self.autoscaling_period)]
        return cmd + self.extra_args

    def start(self) -> "LocalStack":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / "service.log"
        self._stderr = open(log_path, "ab")
        self.proc = subprocess.Popen(self._command(), stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_exit_with_parent)
        env: dict[str, str] = {}
        deadline = time.monotonic() + READY_TIMEOUT
        buf = b""
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"local SageMaker did not get ready in {READY_TIMEOUT}s; see {log_path}")
                if not sel.select(timeout=0.5):
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"local SageMaker exited with {self.proc.returncode}; see {log_path}")
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    self.proc.wait(timeout=10)
                    raise RuntimeError(f"local SageMaker exited with {self.proc.returncode}; see {log_path}")
                buf += chunk
                lines = buf.split(b"\n")
                buf = lines.pop()
                for line in (ln.decode() for ln in lines):
                    if line.startswith("export "):
                        key, _, value = line[len("export "):].partition("=")
                        env[key] = value
                    elif line.strip() == "# ready":
                        self.env = env
                        self._ports = (_port(env["AWS_ENDPOINT_URL_SAGEMAKER"]), _port(env["AWS_ENDPOINT_URL_S3"]))
                        return self
        except BaseException:
            self.stop()
            raise
        finally:
            sel.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
        except ProcessLookupError:
            pass
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if self._stderr:
            self._stderr.close()
            self._stderr = None

    def restart(self) -> "LocalStack":
        self.stop()
        return self.start()

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # clients -------------------------------------------------------------------------------
    def client(self, service: str):
        import boto3

        urls = {"sagemaker": "AWS_ENDPOINT_URL_SAGEMAKER", "sagemaker-runtime": "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME",
                "s3": "AWS_ENDPOINT_URL_S3", "sqs": "AWS_ENDPOINT_URL_SQS",
                "cloudwatch": "AWS_ENDPOINT_URL_CLOUDWATCH",
                "application-autoscaling": "AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING"}
        return boto3.client(
            service, region_name=self.env["AWS_DEFAULT_REGION"], endpoint_url=self.env[urls[service]],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def _exit_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies, even by
    SIGKILL, so a killed test run never leaves a service (and its jobs and servers) behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
