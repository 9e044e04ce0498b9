"""Training jobs run for real through the sagemaker-training toolkit, watched through boto3 and
through the EventBridge-shaped events in SQS."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile

import pytest

from sagemaker_helpers import BUCKET, source_tar, training_request, unique, wait_job

TRAIN_OK = """
import json, os, pathlib
model_dir = pathlib.Path(os.environ["SM_MODEL_DIR"])
data = pathlib.Path(os.environ["SM_CHANNEL_TRAIN"]) / "part-0.txt"
hps = json.loads(os.environ["SM_HPS"])
(model_dir / "weights.txt").write_text(data.read_text().upper() + " lr=" + str(hps["lr"]))
ckpt = pathlib.Path("/".join([os.environ["SAGEMAKER_BASE_DIR"], "checkpoints"]))
(ckpt / "step-1.txt").write_text("checkpoint")
print("epoch=1 loss=0.75")
print("epoch=2 loss=0.25")
"""

TRAIN_FAIL = """
import os, pathlib, sys
print("about to fail", flush=True)
raise FileNotFoundError("tokenizer missing: expected tokenizer.json in the model dir")
"""

TRAIN_SLEEP = """
import time
print("training forever", flush=True)
time.sleep(120)
"""

ALL_REDUCE = """
import os, pathlib
import torch
import torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(f"rank={dist.get_rank()} world={dist.get_world_size()} sum={t.item()}", flush=True)
if dist.get_rank() == 0:
    pathlib.Path(os.environ["SM_MODEL_DIR"], "allreduce.txt").write_text(f"{dist.get_world_size()} {t.item()}")
dist.destroy_process_group()
"""


def _tar_members(s3, uri: str) -> dict[str, bytes]:
    bucket, key = uri[len("s3://"):].split("/", 1)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _statuses(events):
    return [(e["detail"]["TrainingJobStatus"], e["detail"]["SecondaryStatus"]) for e in events]


def test_completed_job_uploads_artifact_reports_metric_and_events(sm, s3, events):
    name = unique("ok")
    src = source_tar(s3, {"train.py": TRAIN_OK}, f"src/{name}/sourcedir.tar.gz")
    s3.put_object(Bucket=BUCKET, Key=f"data/{name}/part-0.txt", Body=b"hello dialog")
    req = training_request(
        name, src, hyperparameters={"lr": 0.001},
        InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/{name}/",
            "S3DataDistributionType": "FullyReplicated"}}}],
        CheckpointConfig={"S3Uri": f"s3://{BUCKET}/checkpoints/{name}"},
        Environment={"MY_SETTING": "on"},
        Tags=[{"Key": "llamaops.dev/owner", "Value": "default/chat"}],
    )
    req["AlgorithmSpecification"]["MetricDefinitions"] = [{"Name": "train:loss", "Regex": r"loss=([0-9.]+)"}]
    arn = sm.create_training_job(**req)["TrainingJobArn"]

    d = wait_job(sm, name)
    assert d["TrainingJobStatus"] == "Completed", d.get("FailureReason")
    assert d["_statuses"][0] == "InProgress"
    assert [t["Status"] for t in d["SecondaryStatusTransitions"]] == \
        ["Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert d["TrainingEndTime"] >= d["TrainingStartTime"]
    assert d["BillableTimeInSeconds"] >= 1
    assert [(m["MetricName"], m["Value"]) for m in d["FinalMetricDataList"]] == [("train:loss", 0.25)]
    artifact = d["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == f"s3://{BUCKET}/output/{name}/output/model.tar.gz"
    assert _tar_members(s3, artifact)["weights.txt"] == b"HELLO DIALOG lr=0.001"
    ckpts = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"checkpoints/{name}/")["Contents"]
    assert [c["Key"] for c in ckpts] == [f"checkpoints/{name}/step-1.txt"]

    got = events.for_arn(arn, until=lambda e: e["detail"]["TrainingJobStatus"] == "Completed")
    assert _statuses(got) == [("InProgress", "Starting"), ("InProgress", "Downloading"), ("InProgress", "Training"),
                              ("InProgress", "Uploading"), ("Completed", "Completed")]
    last = got[-1]
    assert last["source"] == "aws.sagemaker"
    assert last["detail-type"] == "SageMaker Training Job State Change"
    assert last["region"] == "us-east-1"
    assert last["detail"]["TrainingJobName"] == name
    assert last["detail"]["Tags"] == {"llamaops.dev/owner": "default/chat"}
    # epoch millis in a string of digits, as SageMaker's documented example event writes them
    assert isinstance(last["detail"]["CreationTime"], str) and last["detail"]["CreationTime"].isdigit()
    assert abs(int(last["detail"]["CreationTime"]) / 1000 - d["CreationTime"].timestamp()) < 1


def test_failed_job_reports_failure_reason(sm, s3, events, stack):
    name = unique("fail")
    src = source_tar(s3, {"train.py": TRAIN_FAIL}, f"src/{name}/sourcedir.tar.gz")
    arn = sm.create_training_job(**training_request(name, src))["TrainingJobArn"]
    d = wait_job(sm, name)
    assert d["TrainingJobStatus"] == "Failed"
    assert d["SecondaryStatus"] == "Failed"
    assert d["FailureReason"].startswith("AlgorithmError:")
    assert "tokenizer missing" in d["FailureReason"]
    assert "ExitCode 1" in d["FailureReason"]
    got = events.for_arn(arn, until=lambda e: e["detail"]["TrainingJobStatus"] == "Failed")
    assert _statuses(got)[-1] == ("Failed", "Failed")
    assert "tokenizer missing" in got[-1]["detail"]["FailureReason"]
    logs = subprocess.run([sys.executable, "-m", "llama_operator", "logs", name, "--state-dir", str(stack.state_dir)],
                          capture_output=True, text=True, check=True).stdout
    assert "==> algo-1 <==" in logs and "about to fail" in logs
    missing = subprocess.run([sys.executable, "-m", "llama_operator", "logs", "no-such-job", "--state-dir",
                              str(stack.state_dir)], capture_output=True, text=True)
    assert missing.returncode == 1 and "no logs for training job 'no-such-job'" in missing.stderr


def test_stop_training_job(sm, s3, events):
    name = unique("stop")
    src = source_tar(s3, {"train.py": TRAIN_SLEEP}, f"src/{name}/sourcedir.tar.gz")
    arn = sm.create_training_job(**training_request(name, src))["TrainingJobArn"]
    d = wait_job(sm, name, until=("Completed", "Failed", "Stopped", "InProgress"))
    while d["SecondaryStatus"] != "Training":
        d = sm.describe_training_job(TrainingJobName=name)
    sm.stop_training_job(TrainingJobName=name)
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] in ("Stopping", "Stopped")
    d = wait_job(sm, name, timeout=60)
    assert (d["TrainingJobStatus"], d["SecondaryStatus"]) == ("Stopped", "Stopped")
    got = events.for_arn(arn, until=lambda e: e["detail"]["TrainingJobStatus"] == "Stopped")
    assert _statuses(got)[-2:] == [("Stopping", "Stopping"), ("Stopped", "Stopped")]
    with pytest.raises(sm.exceptions.ClientError) as err:
        sm.stop_training_job(TrainingJobName=name)
    assert err.value.response["Error"]["Code"] == "ValidationException"


def test_max_runtime_is_enforced(sm, s3):
    name = unique("maxrt")
    src = source_tar(s3, {"train.py": TRAIN_SLEEP}, f"src/{name}/sourcedir.tar.gz")
    sm.create_training_job(**training_request(name, src, max_runtime=3))
    d = wait_job(sm, name, timeout=60)
    assert (d["TrainingJobStatus"], d["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")


def test_two_instances_form_one_torch_distributed_group(sm, s3, stack):
    # Two 2-host jobs at once: each must form its own group (no shared master address or port).
    jobs = [unique("ddp"), unique("ddp")]
    for name in jobs:
        src = source_tar(s3, {"train.py": ALL_REDUCE}, f"src/{name}/sourcedir.tar.gz")
        sm.create_training_job(**training_request(name, src, instances=2,
                                                  hyperparameters={"sagemaker_torch_distributed_enabled": True}))
    for name in jobs:
        d = wait_job(sm, name, timeout=240)
        logs = [(stack.state_dir / "training-jobs" / name / "logs" / f"algo-{i}.log").read_text() for i in (1, 2)]
        assert d["TrainingJobStatus"] == "Completed", (d.get("FailureReason"), logs[0][-3000:])
        assert "torch.distributed.run" in logs[0] or "torchrun" in logs[0]
        assert "rank=0 world=2 sum=3.0" in logs[0]
        assert "rank=1 world=2 sum=3.0" in logs[1]
        assert _tar_members(s3, d["ModelArtifacts"]["S3ModelArtifacts"])["allreduce.txt"] == b"2 3.0"
        assert d["BillableTimeInSeconds"] == 2 * d["TrainingTimeInSeconds"]


def test_list_training_jobs_filters_by_status(sm, s3):
    name = unique("list")
    src = source_tar(s3, {"train.py": "print('done')\n"}, f"src/{name}/sourcedir.tar.gz")
    sm.create_training_job(**training_request(name, src))
    wait_job(sm, name)
    done = sm.list_training_jobs(StatusEquals="Completed", NameContains=name)["TrainingJobSummaries"]
    assert [j["TrainingJobName"] for j in done] == [name]
    assert sm.list_training_jobs(StatusEquals="Failed", NameContains=name)["TrainingJobSummaries"] == []


def test_missing_input_data_fails_with_client_error(sm, s3):
    name = unique("nodata")
    src = source_tar(s3, {"train.py": "print('never runs')\n"}, f"src/{name}/sourcedir.tar.gz")
    sm.create_training_job(**training_request(name, src, InputDataConfig=[{
        "ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/nothing/{name}/"}}}]))
    d = wait_job(sm, name)
    assert d["TrainingJobStatus"] == "Failed"
    assert d["FailureReason"].startswith("ClientError: No S3 objects found under S3 URL")
    assert [t["Status"] for t in d["SecondaryStatusTransitions"]] == ["Starting", "Downloading", "Failed"]
