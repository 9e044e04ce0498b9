"""A running job's metrics are in CloudWatch while it runs, as SageMaker puts them there; Describe's
FinalMetricDataList stays empty until the job ends, as its reference says."""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid

from llama_operator.aws.metrics import LossReader
from llama_operator.plan.images import training_image_uri

# The `stack`, `sm` and `s3` fixtures come from this folder's conftest.py; its helpers are not
# imported (`from conftest import` finds another folder's conftest when run beside tests/integration).
BUCKET = "local-tests"  # made by the `stack` fixture

TRAIN_LOGS_THEN_WAITS = """
import time
for step, loss in enumerate((1.5, 0.5)):
    print(f"step={step} loss={loss}", flush=True)
time.sleep(120)
"""

NAMESPACE = "/aws/sagemaker/TrainingJobs"


def _source(s3, name: str, script: str) -> str:
    buf, data = io.BytesIO(), script.encode()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    key = f"src/{name}/sourcedir.tar.gz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())
    return f"s3://{BUCKET}/{key}"


def _request(name: str, source: str) -> dict:
    return {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": training_image_uri("us-east-1", "deepspeed"),  # one the local service knows
            "TrainingInputMode": "File",
            "MetricDefinitions": [{"Name": "train:loss", "Regex": r"loss=([0-9.]+)"}]},
        "RoleArn": "arn:aws:iam::123456789012:role/local-sagemaker",
        "HyperParameters": {"sagemaker_program": json.dumps("train.py"),
                            "sagemaker_submit_directory": json.dumps(source)},
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }


def _wait_ended(sm, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        d = sm.describe_training_job(TrainingJobName=name)
        if d["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
            return d
        assert time.monotonic() < deadline, f"job {name} still {d['TrainingJobStatus']}"
        time.sleep(0.3)


def test_loss_is_in_cloudwatch_while_the_job_runs_and_final_metrics_only_at_the_end(sm, s3, stack):
    name = f"live-{uuid.uuid4().hex[:8]}"
    sm.create_training_job(**_request(name, _source(s3, name, TRAIN_LOGS_THEN_WAITS)))
    cw = stack.client("cloudwatch")
    reader = LossReader(lambda: cw, interval=0)  # the operator's read, unthrottled for the test

    deadline = time.monotonic() + 60
    loss = None
    while loss is None:
        assert time.monotonic() < deadline, "no train:loss in CloudWatch while the job ran"
        time.sleep(0.5)
        d = sm.describe_training_job(TrainingJobName=name)
        loss = reader.read(name, d.get("TrainingStartTime"))
    d = sm.describe_training_job(TrainingJobName=name)
    assert d["TrainingJobStatus"] == "InProgress" and d["SecondaryStatus"] == "Training"
    assert not d.get("FinalMetricDataList")          # set only when the job ends
    assert loss in (1.5, 0.5, 1.0)                   # one line or both, averaged over their minute

    metrics = cw.list_metrics(Namespace=NAMESPACE, MetricName="train:loss",
                              Dimensions=[{"Name": "TrainingJobName", "Value": name}])["Metrics"]
    assert [m["Dimensions"] for m in metrics] == [[{"Name": "TrainingJobName", "Value": name}]]

    sm.stop_training_job(TrainingJobName=name)
    d = _wait_ended(sm, name)
    assert d["TrainingJobStatus"] == "Stopped"
    assert [(m["MetricName"], m["Value"]) for m in d["FinalMetricDataList"]] == [("train:loss", 0.5)]
    assert LossReader(lambda: cw).read(name, d["TrainingStartTime"]) == 1.0  # both values, one minute
