"""The real operator (kopf + our handlers) against the embedded Kubernetes API and the local
SageMaker service over HTTP. Resync is set to an hour, so every status change seen here came
through the SQS events."""

from __future__ import annotations

import json

import pytest

from operator_harness import BUCKET
from operator_harness import PLURAL, InProcessOperator, finetune, jobs_for, phase_is, status_of, unique, wait_for
from llama_operator.plan.names import training_job_name
from llama_operator.settings import Settings

HOUR = 3600


@pytest.fixture(scope="module")
def settings(local_aws, workloads):
    return Settings(region=local_aws.env["AWS_DEFAULT_REGION"],
                    events_queue_url=local_aws.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"],
                    resync_seconds=HOUR, workloads_dir=workloads, retry_seconds=0.5,
                    stop_poll_seconds=0.5, events_wait_seconds=1)


@pytest.fixture(scope="module")
def operator(settings, kube):
    with InProcessOperator(settings, kube.kubeconfig_path) as op:
        yield op


@pytest.fixture(scope="module")
def sm(local_aws):
    return local_aws.client("sagemaker")


def events_for(kube, name: str) -> list[dict]:
    return [e for e in kube.list("events", "default", api_version="v1") if e["involvedObject"]["name"] == name]


def test_apply_creates_one_job_and_events_drive_status_to_completed(kube, operator, sm, local_aws):
    name = unique("chat")
    obj = kube.apply(finetune(name, BUCKET))
    uid = obj["metadata"]["uid"]
    job = training_job_name("default", name, uid)

    st = wait_for(phase_is(kube, name, "Completed", "Failed"), timeout=120, what=f"{name} to finish")
    assert st["phase"] == "Completed", st
    assert jobs_for(sm, name[:20]) == [job]

    # The request as the service received it matches what the spec asks for.
    d = sm.describe_training_job(TrainingJobName=job)
    spec = obj["spec"]
    assert d["RoleArn"] == spec["roleArn"]
    assert d["ResourceConfig"]["InstanceType"] == spec["resources"]["instanceType"]
    assert d["ResourceConfig"]["InstanceCount"] == spec["resources"]["instanceCount"]
    assert d["StoppingCondition"]["MaxRuntimeInSeconds"] == spec["resources"]["maxRuntimeSeconds"]
    assert d["OutputDataConfig"]["S3OutputPath"].rstrip("/") == spec["outputS3Uri"].rstrip("/")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in d["InputDataConfig"]}
    assert channels["train"] == spec["dataset"]["train"]
    assert json.loads(json.dumps(d["HyperParameters"]))["base_model"] == spec["baseModel"]["s3Uri"]
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=d["TrainingJobArn"])["Tags"]}
    assert tags["llamaops.dev/uid"] == uid and tags["llamaops.dev/name"] == name
    assert tags["llamaops.dev/namespace"] == "default" and tags["team"] == "dialog"

    # Status tells the story SageMaker told.
    assert st["trainingJobName"] == job and st["trainingJobArn"] == d["TrainingJobArn"]
    assert st["modelArtifacts"] == d["ModelArtifacts"]["S3ModelArtifacts"] != ""
    assert st["modelS3Uri"] == f"{spec['outputS3Uri'].rstrip('/')}/{job}/model/"
    assert st["billableSeconds"] == d["BillableTimeInSeconds"]
    assert st["trainingLoss"] == 0.42
    assert st["sourceS3Uri"].startswith("s3://") and st["sourceS3Uri"].endswith(".tar.gz")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Failed"]["status"] == "False"
    assert conds["Progressing"]["status"] == "False"
    assert conds["Ready"]["observedGeneration"] == 1
    after = kube.get(PLURAL, "default", name)
    assert after["spec"] == spec and after["metadata"]["generation"] == 1  # the operator never writes spec
    reasons = [e["reason"] for e in events_for(kube, name)]
    assert "Created" in reasons and "TrainingJobCompleted" in reasons and "Training" in reasons


def test_failing_job_goes_failed_with_reason(kube, operator, sm):
    name = unique("fail")
    kube.apply(finetune(name, BUCKET))
    st = wait_for(phase_is(kube, name, "Completed", "Failed"), timeout=120, what=f"{name} to finish")
    assert st["phase"] == "Failed"
    d = sm.describe_training_job(TrainingJobName=st["trainingJobName"])
    assert d["TrainingJobStatus"] == "Failed"
    assert st["failureReason"] == d["FailureReason"] and st["failureReason"].startswith("AlgorithmError")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Failed"]["status"] == "True" and conds["Failed"]["reason"] == "TrainingJobFailed"
    assert d["FailureReason"] in conds["Failed"]["message"]
    assert conds["Ready"]["status"] == "False"
    assert any(e["type"] == "Warning" and e["reason"] == "TrainingJobFailed" for e in events_for(kube, name))


def test_reapply_same_spec_creates_no_new_job(kube, operator, sm):
    name = unique("again")
    manifest = finetune(name, BUCKET)
    kube.apply(manifest)
    wait_for(phase_is(kube, name, "Completed", "Failed"), timeout=120, what=f"{name} to finish")
    before = status_of(kube, name)
    for _ in range(2):
        kube.apply(manifest)
    obj = kube.get(PLURAL, "default", name)
    assert obj["metadata"]["generation"] == 1  # identical spec: nothing changed
    assert len(jobs_for(sm, name[:20])) == 1
    assert status_of(kube, name)["trainingJobName"] == before["trainingJobName"]


def test_delete_while_running_stops_the_job_then_the_object_goes(kube, operator, sm):
    name = unique("slow")
    kube.apply(finetune(name, BUCKET))
    st = wait_for(lambda: status_of(kube, name) if status_of(kube, name).get("secondaryStatus") == "Training"
                  else None, timeout=90, what="training to start")
    job = st["trainingJobName"]
    assert kube.delete(PLURAL, "default", name) == 200
    wait_for(lambda: kube.get(PLURAL, "default", name) is None, timeout=90, what="the object to go")
    d = sm.describe_training_job(TrainingJobName=job)
    assert d["TrainingJobStatus"] == "Stopped"
    assert [t["Status"] for t in d["SecondaryStatusTransitions"]][-2:] == ["Stopping", "Stopped"]


def test_retain_policy_leaves_the_job_running(kube, operator, sm):
    name = unique("slow-keep")
    kube.apply(finetune(name, BUCKET, policy="Retain"))
    st = wait_for(lambda: status_of(kube, name) if status_of(kube, name).get("trainingJobName") else None,
                  timeout=60, what="the job")
    assert kube.delete(PLURAL, "default", name) == 200
    wait_for(lambda: kube.get(PLURAL, "default", name) is None, timeout=30, what="the object to go")
    assert sm.describe_training_job(TrainingJobName=st["trainingJobName"])["TrainingJobStatus"] == "InProgress"
    sm.stop_training_job(TrainingJobName=st["trainingJobName"])
