"""The service's scheduled mode and throttling, which the operator's scale benchmark runs on: jobs
and endpoints go through SageMaker's states on a timetable without running anything, and a
fraction of calls is answered ThrottlingException, which botocore reads as AWS's own."""

from __future__ import annotations

import json
import urllib.request

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from llama_operator.local.stack import LocalStack
from sagemaker_helpers import BUCKET, ROLE, training_request, unique, validated, wait_endpoint, wait_job


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    with LocalStack(tmp_path_factory.mktemp("scheduled"), extra_args=["--scheduled", "0.2", "--throttle-rate", "0.3"]) as s:
        s.client("s3").create_bucket(Bucket=BUCKET)
        yield s


def client(stack, attempts: int):
    import boto3

    return validated(boto3.client("sagemaker", region_name=stack.env["AWS_DEFAULT_REGION"],
                                  endpoint_url=stack.env["AWS_ENDPOINT_URL_SAGEMAKER"],
                                  aws_access_key_id="x", aws_secret_access_key="x",
                                  config=Config(retries={"mode": "standard", "max_attempts": attempts})))


def test_a_job_goes_through_sagemakers_states_on_the_timetable(scheduled):
    sm = client(scheduled, 20)
    name = unique("sched")
    sm.create_training_job(**training_request(name, f"s3://{BUCKET}/src/none.tar.gz"))
    d = wait_job(sm, name, timeout=30)
    assert d["TrainingJobStatus"] == "Completed"
    assert [t["Status"] for t in d["SecondaryStatusTransitions"]] == ["Starting", "Downloading", "Training",
                                                                      "Uploading", "Completed"]
    assert d["ModelArtifacts"]["S3ModelArtifacts"].endswith(f"/{name}/output/model.tar.gz")


def test_an_endpoint_comes_in_service_and_goes_without_serving(scheduled):
    sm = client(scheduled, 20)
    name = unique("sched-ep")
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.33.0-lmi15.0.0-cu128"})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name, "InstanceType": "ml.g5.xlarge", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    assert wait_endpoint(sm, name, timeout=30)["EndpointStatus"] == "InService"
    sm.delete_endpoint(EndpointName=name)
    with pytest.raises(ClientError):
        for _ in range(100):
            sm.describe_endpoint(EndpointName=name)
            __import__("time").sleep(0.1)


def test_a_fraction_of_calls_is_throttled_as_aws_throttles(scheduled):
    sm = client(scheduled, 1)  # no retries: each throttle surfaces
    codes = []
    for _ in range(40):
        try:
            sm.list_training_jobs()
            codes.append("ok")
        except ClientError as exc:
            codes.append(exc.response["Error"]["Code"])
    assert set(codes) == {"ok", "ThrottlingException"}
    with urllib.request.urlopen(scheduled.env["AWS_ENDPOINT_URL_SAGEMAKER"] + "/_local/calls") as r:
        calls = {(c["operation"], c["outcome"]): c["count"] for c in json.loads(r.read())}
    assert calls[("ListTrainingJobs", "throttled")] >= codes.count("ThrottlingException")
