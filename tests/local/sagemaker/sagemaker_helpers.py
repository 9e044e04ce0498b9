"""Helpers for the local SageMaker service's tests: constants, request builders and waits that
reach the service only through boto3. A module of its own (not conftest) so that tests import it by
a name no other test folder uses."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tarfile
import time
import uuid
from pathlib import Path

from llama_operator.plan.images import training_image_uri

HERE = Path(__file__).parent
ECHO_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/local-echo:1"
# Jobs run in the environment of their image's profile: the PyTorch training image's.
TRAINING_IMAGE = training_image_uri("us-east-1", "deepspeed")
CONTAINERS = {"local-echo": f"{sys.executable} {HERE / 'echo_server.py'}"}
ROLE = "arn:aws:iam::123456789012:role/local-sagemaker"
BUCKET = "local-tests"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def validated(client):
    """The client, checking every successful response against botocore's output shape (required
    members, types, lengths), so a reply SageMaker would never send fails the test."""
    from botocore.validate import ParamValidator

    def check(http_response, parsed, model, **_):
        if http_response.status_code >= 300 or model.output_shape is None:
            return
        body = {k: v for k, v in parsed.items() if k != "ResponseMetadata"}
        payload = model.output_shape.serialization.get("payload")
        if payload:  # the raw body (a stream) stands for itself
            body[payload] = b""
        report = ParamValidator().validate(body, model.output_shape)
        assert not report.has_errors(), f"{model.name} response breaks the service model:\n{report.generate_report()}"

    client.meta.events.register("after-call.*.*", check)
    return client


class EventLog:
    """Everything read from the events queue so far, filtered per resource on demand (tests share
    one queue)."""

    def __init__(self, sqs, url: str):
        self.sqs, self.url, self.seen = sqs, url, []

    def drain(self) -> None:
        while True:
            resp = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            msgs = resp.get("Messages", [])
            if not msgs:
                return
            for m in msgs:
                self.seen.append(json.loads(m["Body"]))
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=m["ReceiptHandle"])

    def for_arn(self, arn: str, until=None, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            got = [e for e in self.seen if arn in e["resources"]]
            if until is None or any(until(e) for e in got) or time.monotonic() > deadline:
                return got
            time.sleep(0.3)


def source_tar(s3, files: dict[str, str], key: str) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    s3.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())
    return f"s3://{BUCKET}/{key}"


def training_request(name: str, source_uri: str, *, entry: str = "train.py", instances: int = 1,
                     max_runtime: int = 600, hyperparameters: dict | None = None, **extra) -> dict:
    hp = {"sagemaker_program": json.dumps(entry), "sagemaker_submit_directory": json.dumps(source_uri)}
    hp.update({k: json.dumps(v) for k, v in (hyperparameters or {}).items()})
    req = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {"TrainingImage": TRAINING_IMAGE,
                                   "TrainingInputMode": "File"},
        "RoleArn": ROLE,
        "HyperParameters": hp,
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": instances, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime},
    }
    req.update(extra)
    return req


def wait_job(sm, name: str, timeout: float = 120, until=("Completed", "Failed", "Stopped")) -> dict:
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        d = sm.describe_training_job(TrainingJobName=name)
        if not seen or seen[-1] != d["TrainingJobStatus"]:
            seen.append(d["TrainingJobStatus"])
        if d["TrainingJobStatus"] in until:
            d["_statuses"] = seen
            return d
        assert time.monotonic() < deadline, f"job {name} still {d['TrainingJobStatus']}/{d['SecondaryStatus']}"
        time.sleep(0.3)


def wait_endpoint(sm, name: str, timeout: float = 60, until=("InService", "Failed")) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        d = sm.describe_endpoint(EndpointName=name)
        if d["EndpointStatus"] in until:
            return d
        assert time.monotonic() < deadline, f"endpoint {name} still {d['EndpointStatus']}"
        time.sleep(0.2)


def wait_ic(sm, name: str, until=lambda d: d["InferenceComponentStatus"] in ("InService", "Failed"),
            timeout: float = 30) -> dict:
    """DescribeInferenceComponent until `until` holds (InService or Failed by default)."""
    deadline = time.monotonic() + timeout
    while True:
        d = sm.describe_inference_component(InferenceComponentName=name)
        if until(d):
            return d
        assert time.monotonic() < deadline, (f"{name}: {d['InferenceComponentStatus']} {d.get('FailureReason')} "
                                             f"{d.get('RuntimeConfig')}")
        time.sleep(0.1)


def wait_ic_gone(sm, name: str, timeout: float = 60) -> None:
    """Until DescribeInferenceComponent no longer finds it (Deleting meanwhile, nothing else)."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    while True:
        try:
            d = sm.describe_inference_component(InferenceComponentName=name)
        except ClientError as exc:
            assert "Could not find inference component" in exc.response["Error"]["Message"]
            return
        assert d["InferenceComponentStatus"] == "Deleting" and time.monotonic() < deadline, d
        time.sleep(0.1)


def copies(n: int):
    """`wait_ic`'s condition for n copies in service."""
    return lambda d: d["InferenceComponentStatus"] == "InService" and d["RuntimeConfig"]["CurrentCopyCount"] == n


@contextlib.contextmanager
def compressed_stack(state_dir, period: float):
    """A service of the test module's own, one autoscaling metric period lasting `period` seconds,
    with the tests' bucket."""
    from llama_operator.local.stack import LocalStack

    with LocalStack(state_dir, containers=CONTAINERS, autoscaling_period=period) as s:
        s.client("s3").create_bucket(Bucket=BUCKET)
        yield s
