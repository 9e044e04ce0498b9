"""Faults around the operator: killed mid-creation and restarted, SageMaker throttling, and
stale events arriving late. Each test runs its own operator, one at a time."""

from __future__ import annotations

import json

from botocore.stub import Stubber

from operator_harness import BUCKET
from operator_harness import InProcessOperator, SubprocessOperator, finetune, jobs_for, status_of, unique, wait_for
from llama_operator.settings import Settings

HOUR = 3600


def settings_for(local_aws, workloads) -> Settings:
    return Settings(region=local_aws.env["AWS_DEFAULT_REGION"],
                    events_queue_url=local_aws.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"], resync_seconds=HOUR,
                    workloads_dir=workloads, retry_seconds=0.5, stop_poll_seconds=0.5, events_wait_seconds=1)


def test_operator_killed_mid_creation_and_restarted_makes_one_job(kube, local_aws, workloads, tmp_path):
    sm = local_aws.client("sagemaker")
    env = {"LLAMA_OPERATOR_RESYNC_SECONDS": str(HOUR), "LLAMA_OPERATOR_WORKLOADS_DIR": str(workloads),
           "LLAMA_OPERATOR_EVENTS_QUEUE_URL": local_aws.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"], **local_aws.env}
    name = unique("restart")
    first = SubprocessOperator(kube.kubeconfig_path, env, tmp_path / "operator-1.log").start()
    try:
        kube.apply(finetune(name, BUCKET))
        # Kill -9 the moment SageMaker has the job: the operator may not have recorded it yet.
        try:
            wait_for(lambda: jobs_for(sm, name[:20]), timeout=60, interval=0.05, what="CreateTrainingJob")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{(tmp_path / 'operator-1.log').read_text()[-30000:]}") from None
    finally:
        first.kill()
    second = SubprocessOperator(kube.kubeconfig_path, env, tmp_path / "operator-2.log").start()
    try:
        st = wait_for(lambda: status_of(kube, name) if status_of(kube, name).get("phase") in ("Completed", "Failed")
                      else None, timeout=120, what="the job to finish after the restart")
    finally:
        second.kill()
    assert st["phase"] == "Completed", (st, (tmp_path / "operator-2.log").read_text()[-3000:])
    assert jobs_for(sm, name[:20]) == [st["trainingJobName"]]
    # Re-applying after the restart changes nothing either.
    kube.apply(finetune(name, BUCKET))
    assert jobs_for(sm, name[:20]) == [st["trainingJobName"]]


def test_throttling_is_retried_and_status_says_so(kube, local_aws, workloads):
    sm_real = local_aws.client("sagemaker")
    client = local_aws.client("sagemaker")
    stubber = Stubber(client)
    for _ in range(2):  # two attempts throttled: Describe (no such job) then Create (throttled)
        stubber.add_client_error("describe_training_job", "ValidationException", "Requested resource not found.")
        stubber.add_client_error("create_training_job", "ThrottlingException", "Rate exceeded", http_status_code=400)
    stubber.activate()
    name = unique("throttle")
    with InProcessOperator(settings_for(local_aws, workloads), kube.kubeconfig_path, sagemaker_client=client):
        kube.apply(finetune(name, BUCKET))
        st = wait_for(lambda: status_of(kube, name) if any(
            c["type"] == "Synced" and c["reason"] == "Throttled" for c in status_of(kube, name).get("conditions", []))
            else None, timeout=30, what="a Throttled condition")
        assert st["phase"] == "Creating"
        synced = next(c for c in st["conditions"] if c["type"] == "Synced")
        assert synced["status"] == "False" and "Rate exceeded" in synced["message"]
        wait_for(lambda: not stubber._queue, timeout=30, what="both throttled attempts")
        stubber.deactivate()  # SageMaker recovers
        st = wait_for(lambda: status_of(kube, name) if status_of(kube, name).get("phase") == "Completed" else None,
                      timeout=90, what="Completed after throttling")
    assert jobs_for(sm_real, name[:20]) == [st["trainingJobName"]]
    synced = next(c for c in st["conditions"] if c["type"] == "Synced")
    assert synced["status"] == "True"


def test_late_and_duplicate_events_never_move_status_backwards(kube, local_aws, workloads):
    sqs = local_aws.client("sqs")
    queue = local_aws.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"]
    sent: list[dict] = []
    name = unique("order")
    with InProcessOperator(settings_for(local_aws, workloads), kube.kubeconfig_path):
        kube.apply(finetune(name, BUCKET))
        done = wait_for(lambda: status_of(kube, name) if status_of(kube, name).get("phase") == "Completed" else None,
                        timeout=90, what="Completed")
        sm = local_aws.client("sagemaker")
        d = sm.describe_training_job(TrainingJobName=done["trainingJobName"])
        tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=d["TrainingJobArn"])["Tags"]}
        # An InProgress event from before completion, delivered late, twice; and a malformed message.
        detail = {"TrainingJobName": d["TrainingJobName"], "TrainingJobArn": d["TrainingJobArn"],
                  "TrainingJobStatus": "InProgress", "SecondaryStatus": "Training", "Tags": tags,
                  "LastModifiedTime": int(d["TrainingStartTime"].timestamp() * 1000)}
        late = {"version": "0", "id": "late", "detail-type": "SageMaker Training Job State Change",
                "source": "aws.sagemaker", "resources": [d["TrainingJobArn"]], "detail": detail}
        for body in (json.dumps(late), "not json at all", json.dumps(late)):
            sqs.send_message(QueueUrl=queue, MessageBody=body)
            sent.append(body)
        wait_for(lambda: int(sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
                             ["ApproximateNumberOfMessages"]) == 0, timeout=30, what="the queue to drain")
        after = status_of(kube, name)
    assert after["phase"] == "Completed" and after["secondaryStatus"] == "Completed"
    assert after["lastEventTime"] == done["lastEventTime"]


def test_without_a_queue_the_describe_resync_is_the_fallback(kube, local_aws, workloads):
    settings = Settings(region=local_aws.env["AWS_DEFAULT_REGION"], events_queue_url=None, resync_seconds=1,
                        workloads_dir=workloads, retry_seconds=0.5)
    name = unique("noqueue")
    with InProcessOperator(settings, kube.kubeconfig_path):
        kube.apply(finetune(name, BUCKET))
        st = wait_for(lambda: status_of(kube, name) if status_of(kube, name).get("phase") == "Completed" else None,
                      timeout=90, what="Completed through resync")
    assert st["modelArtifacts"].startswith("s3://") and st["trainingLoss"] == 0.42
