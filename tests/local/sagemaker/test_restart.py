"""State survives a restart of the service: objects are still there, a running job is reported lost
(as SageMaker does on host loss), and an InService endpoint serves again."""

from __future__ import annotations

import json
import os
import re
import time

from sagemaker_helpers import (ECHO_IMAGE, ROLE, source_tar, training_request, unique, validated, wait_endpoint,
                      wait_job)


def test_restart_keeps_state_and_fails_running_job(stack, sm, s3, events):
    done, running = unique("done"), unique("running")
    src = source_tar(s3, {"train.py": "print('ok')\n"}, f"src/{done}/sourcedir.tar.gz")
    sm.create_training_job(**training_request(done, src))
    assert wait_job(sm, done)["TrainingJobStatus"] == "Completed"
    slow = source_tar(s3, {"train.py": "import os, time\nprint(f'busy pid {os.getpid()}', flush=True)\ntime.sleep(120)\n"},
                      f"src/{running}/sourcedir.tar.gz")
    running_arn = sm.create_training_job(**training_request(running, slow))["TrainingJobArn"]
    while sm.describe_training_job(TrainingJobName=running)["SecondaryStatus"] != "Training":
        time.sleep(0.2)

    sm.create_model(ModelName="keeper", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": ECHO_IMAGE})
    sm.create_endpoint_config(EndpointConfigName="keeper", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "keeper", "InstanceType": "ml.g5.2xlarge", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName="keeper", EndpointConfigName="keeper")
    assert wait_endpoint(sm, "keeper")["EndpointStatus"] == "InService"
    rt_before = validated(stack.client("sagemaker-runtime"))
    server_pid = json.loads(rt_before.invoke_endpoint(EndpointName="keeper", Body=b"{}",
                                                      ContentType="application/json")["Body"].read())["pid"]
    log = stack.state_dir / "training-jobs" / running / "logs" / "algo-1.log"
    deadline = time.monotonic() + 60
    while not re.search(r"busy pid (\d+)\n", log.read_text()):
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    job_pid = int(re.search(r"busy pid (\d+)\n", log.read_text()).group(1))
    events.for_arn(running_arn)  # read what was sent before the restart

    stack.restart()
    for pid in (job_pid, server_pid):  # the old service took its workloads down with it
        assert not _alive(pid), f"process {pid} outlived the service"
    sm2, rt = validated(stack.client("sagemaker")), validated(stack.client("sagemaker-runtime"))
    events.sqs = stack.client("sqs")

    finished = sm2.describe_training_job(TrainingJobName=done)
    assert finished["TrainingJobStatus"] == "Completed"
    bucket, key = finished["ModelArtifacts"]["S3ModelArtifacts"][len("s3://"):].split("/", 1)
    assert stack.client("s3").head_object(Bucket=bucket, Key=key)["ContentLength"] > 0  # S3 kept too
    lost = sm2.describe_training_job(TrainingJobName=running)
    assert lost["TrainingJobStatus"] == "Failed"
    assert lost["FailureReason"].startswith("host lost: the local SageMaker service restarted")
    got = events.for_arn(running_arn, until=lambda e: e["detail"]["TrainingJobStatus"] == "Failed")
    assert got[-1]["detail"]["TrainingJobStatus"] == "Failed"

    assert sm2.describe_model(ModelName="keeper")["ModelName"] == "keeper"
    assert wait_endpoint(sm2, "keeper")["EndpointStatus"] == "InService"
    out = json.loads(rt.invoke_endpoint(EndpointName="keeper", Body=b"{}", ContentType="application/json")["Body"].read())
    assert out["echo"] == {}
    sm2.delete_endpoint(EndpointName="keeper")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone too
        return f.read().split(")")[-1].split()[0] != "Z"
