"""The real operator (kopf, our handlers) against the embedded Kubernetes API and the local
SageMaker service, for the integration tests."""

from __future__ import annotations

import asyncio
import dataclasses
import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from llama_operator import runner
from llama_operator.settings import Settings

API = "llamaops.dev/v1alpha1"
BUCKET = "finetune-it"  # seeded by seeded_stack
PLURAL = "llamafinetunes"

# Tiny stand-ins for workloads/: the job's behaviour follows the resource's name, which the
# deterministic training job name starts with.
TRAIN_ENTRY = '''
import json, os, pathlib, sys, time
env = json.loads(os.environ.get("SM_TRAINING_ENV", "{}"))
job = env.get("job_name", "")
if "fail" in job:
    print("tokenizer check", flush=True)
    raise SystemExit("tokenizer missing: expected tokenizer.json under the base model")
if "slow" in job:
    print("training slowly", flush=True)
    time.sleep(120)
model = pathlib.Path(os.environ["SM_MODEL_DIR"])
base = json.loads(os.environ.get("SM_HPS", "{}")).get("base_model")
(model / "trained.json").write_text(json.dumps({"base": base, "job": job}))
for step, loss in enumerate((1.5, 0.9, 0.42)):
    print(f"step={step} loss={loss}", flush=True)
    print(json.dumps({"loss": loss, "step": step}), flush=True)
'''


@contextlib.contextmanager
def environment(values: dict):
    """These variables set for the duration (boto3 and the operator's settings read os.environ),
    then restored as they were."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def seeded_stack(state_dir, **stack_options):
    """The local SageMaker service with a bucket holding a stand-in base model and dataset, and the
    AWS variables pointing boto3 at it."""
    from llama_operator.local.stack import LocalStack

    with LocalStack(state_dir, **stack_options) as stack:
        s3 = stack.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="models/tiny/config.json", Body=b'{"model_type": "llama"}')
        s3.put_object(Bucket=BUCKET, Key="data/dailydialog/train.txt", Body=b"Person1: hi##Person2: hello")
        with environment(stack.env):
            yield stack


def write_workloads(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("train_entry.py", "train.py"):
        (root / name).write_text(TRAIN_ENTRY)
    return root


def finetune(name: str, bucket: str, *, namespace: str = "default", policy: str = "Delete", **spec) -> dict:
    body = {
        "baseModel": {"s3Uri": f"s3://{bucket}/models/tiny/"},
        "dataset": {"train": f"s3://{bucket}/data/dailydialog/"},
        "resources": {"instanceType": "ml.m5.xlarge", "instanceCount": 1, "volumeSizeGB": 30,
                      "maxRuntimeSeconds": 600},
        "hyperparameters": {"epochs": 1, "learningRate": 0.0002, "maxSequenceLength": 256},
        "roleArn": "arn:aws:iam::123456789012:role/sagemaker-finetune",
        "outputS3Uri": f"s3://{bucket}/output",
        "tags": {"team": "dialog"},
        "deletionPolicy": policy,
    }
    body.update(spec)
    return {"apiVersion": API, "kind": "LlamaFinetune", "metadata": {"name": name, "namespace": namespace},
            "spec": body}


# A stand-in model server for endpoints: SageMaker's inference container contract (GET /ping,
# POST /invocations on SAGEMAKER_BIND_TO_PORT) and nothing else; ready at once, or, with STUB_FAIL
# in its environment, a model that never loads (it exits at start).
STUB_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/stub-serving:1"
STUB_SERVER = '''
import http.server, json, os

class Handler(http.server.BaseHTTPRequestHandler):
    def _send(self, code, body=b""):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(200 if self.path == "/ping" else 404)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(200, json.dumps({"generated_text": "stub"}).encode())

    def log_message(self, *args):
        pass

if os.environ.get("STUB_FAIL"):
    raise SystemExit("stub model: STUB_FAIL is set, failing to load")
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["SAGEMAKER_BIND_TO_PORT"])), Handler).serve_forever()
'''


def write_stub_server(root: Path) -> dict[str, str]:
    """The stub server under `root`, as the local SageMaker service's `containers` table entry
    (image regex -> command) that serves STUB_IMAGE with it."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "stub_server.py"
    path.write_text(STUB_SERVER)
    return {"stub-serving": f"{{python}} {path}"}


def endpoint(name: str, *, namespace: str = "default", source: dict, role: str,
             image: str = STUB_IMAGE, policy: str = "Delete") -> dict:
    """A LlamaEndpoint served by the stub server (quick to become InService)."""
    return {"apiVersion": API, "kind": "LlamaEndpoint", "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": source,
                     "serving": {"engine": "batching", "maxNewTokens": 8, "maxBatchSize": 4, "maxWaitMs": 5,
                                 "dtype": "fp32"},
                     "resources": {"instanceType": "ml.g5.xlarge", "instanceCount": 1,
                                   "containerStartupHealthCheckTimeoutSeconds": 60},
                     "roleArn": role, "image": image,
                     "deployment": {"strategy": "AllAtOnce", "waitIntervalSeconds": 0},
                     "deletionPolicy": policy}}


class InProcessOperator:
    """kopf.operator() in a thread with its own event loop, stopped through kopf's stop flag.
    `endpoints`: also the LlamaEndpoint handlers, with short waits; `peering`: run with kopf
    peering under that ClusterKopfPeering name instead of standalone."""

    def __init__(self, settings: Settings, kubeconfig: Path, sagemaker_client=None, *, endpoints: bool = False,
                 peering: str | None = None):
        if endpoints:  # with short waits
            settings = dataclasses.replace(settings, model_wait_seconds=1.0, endpoint_retry_seconds=1.0,
                                           delete_poll_seconds=0.5)
        self.registry = runner.build_registry(settings, kubeconfig=str(kubeconfig), sagemaker_client=sagemaker_client)
        if endpoints:
            from llama_operator.handlers import endpoint as endpoint_handlers

            endpoint_handlers.register(self.registry, self.registry.app)
        self.peering = peering
        self.stop_flag, self.ready_flag = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(runner.operator_coroutine(self.registry, peering=self.peering, stop_flag=self.stop_flag,
                                                  ready_flag=self.ready_flag))
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> "InProcessOperator":
        self.thread.start()
        assert self.ready_flag.wait(60), f"operator did not get ready: {self.error!r}"
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "operator did not stop"


class SubprocessOperator:
    """`llama-operator run` as a process of its own, which a test may kill outright."""

    def __init__(self, kubeconfig: Path, env: dict, log_path: Path, extra=(), peering: str | None = None):
        mode = ["--peering", peering] if peering else ["--standalone"]
        self.cmd = [sys.executable, "-m", "llama_operator", "run", "-A", *mode,
                    "--kubeconfig", str(kubeconfig), *extra]
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "SubprocessOperator":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        if self.proc:
            self.proc.wait(30)
        self._log.close()

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, as Kubernetes stops a pod; kopf then leaves the peering at once."""
        self.proc.terminate()
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_for(fn, timeout: float = 60, what: str = "condition", interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def status_of(kube, name: str, namespace: str = "default") -> dict:
    return ((kube.get(PLURAL, namespace, name) or {}).get("status")) or {}


def phase_is(kube, name: str, *phases):
    return lambda: status_of(kube, name) if status_of(kube, name).get("phase") in phases else None


def jobs_for(sm, name: str) -> list[str]:
    return [j["TrainingJobName"] for j in sm.list_training_jobs(NameContains=name, MaxResults=100)["TrainingJobSummaries"]]


def owned(sm, uid: str) -> dict[str, list[str]]:
    """Every SageMaker endpoint, config and model carrying this owner uid, listed afresh. An object
    deleted between the listing and its tag lookup (the operator collecting it) is gone: left out."""
    from botocore.exceptions import ClientError

    out = {}
    for op, key, name_key, arn_key in (("list_endpoints", "Endpoints", "EndpointName", "EndpointArn"),
                                       ("list_endpoint_configs", "EndpointConfigs", "EndpointConfigName",
                                        "EndpointConfigArn"),
                                       ("list_models", "Models", "ModelName", "ModelArn")):
        names = []
        for item in getattr(sm, op)(MaxResults=100)[key]:
            try:
                tag_list = sm.list_tags(ResourceArn=item[arn_key])["Tags"]
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("ValidationException", "ResourceNotFound"):
                    continue
                raise
            if {t["Key"]: t["Value"] for t in tag_list}.get("llamaops.dev/uid") == uid:
                names.append(item[name_key])
        out[key] = sorted(names)
    return out


@contextlib.contextmanager
def scaling_world(tmp_path_factory, **settings):
    """The embedded default with one autoscaling metric period a second, the stub model server,
    and the operator (endpoint handlers included) running in this process: kube, and boto3
    clients sm, rt, aas and cw."""
    import boto3

    from llama_operator.local.kubernetes.server import EmbeddedKubernetes
    from llama_operator.paths import crds_dir

    containers = write_stub_server(tmp_path_factory.mktemp("stub-serving"))
    with seeded_stack(tmp_path_factory.mktemp("sagemaker"), containers=containers,
                      extra_args=["--autoscaling-period", "1"]) as stack, \
            EmbeddedKubernetes(crds_dir=crds_dir()) as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
        region = stack.env["AWS_DEFAULT_REGION"]
        config = Settings(region=region, events_queue_url=stack.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"],
                          resync_seconds=3600, endpoint_retry_seconds=1, events_wait_seconds=1, **settings)
        aas = boto3.client("application-autoscaling", region_name=region,
                           endpoint_url=stack.env["AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING"])
        with InProcessOperator(config, kubeconfig, endpoints=True):
            yield {"kube": kube, "sm": stack.client("sagemaker"), "rt": stack.client("sagemaker-runtime"),
                   "aas": aas, "cw": stack.client("cloudwatch")}
