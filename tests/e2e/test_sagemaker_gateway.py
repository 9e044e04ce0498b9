"""The LlamaFinetune SageMaker gateway: error classes for AWS errors that cannot be produced here
(botocore's Stubber), and adoption against the local SageMaker service."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from llama_operator.aws.errors import RetryableError, TerminalError
from llama_operator.aws.training_jobs import TrainingJobGateway
from llama_operator.plan.images import training_image_uri

REQUEST = {
    "TrainingJobName": "default-gw-0123abcd",
    "AlgorithmSpecification": {"TrainingImage": training_image_uri("us-east-1", "deepspeed"),
                               "TrainingInputMode": "File"},
    "RoleArn": "arn:aws:iam::123456789012:role/r",
    "OutputDataConfig": {"S3OutputPath": "s3://b/out"},
    "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
    "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    "Tags": [{"Key": "llamaops.dev/uid", "Value": "u-1"}],
}


def stubbed():
    client = boto3.client("sagemaker", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    return client, Stubber(client)


@pytest.mark.parametrize("code,status,kind", [
    ("ThrottlingException", 400, RetryableError),
    ("InternalFailure", 500, RetryableError),
    ("ServiceUnavailable", 503, RetryableError),
    ("ValidationException", 400, TerminalError),
    ("ResourceLimitExceeded", 400, TerminalError),
    ("AccessDeniedException", 400, TerminalError),
])
def test_create_errors_are_classified(code, status, kind):
    client, stub = stubbed()
    stub.add_client_error("describe_training_job", "ValidationException", "Requested resource not found.")
    stub.add_client_error("create_training_job", code, f"{code} says no", http_status_code=status,
                          expected_params=REQUEST)
    with stub, pytest.raises(kind) as err:
        TrainingJobGateway(client).ensure_training_job(REQUEST)
    assert err.value.code == code and err.value.message == f"{code} says no"
    assert err.value.operation == "CreateTrainingJob"


def test_existing_job_with_the_name_is_adopted_not_created(local_aws):
    client = local_aws.client("sagemaker")
    s3 = local_aws.client("s3")
    s3.create_bucket(Bucket="gw-adopt")
    s3.put_object(Bucket="gw-adopt", Key="data/x.txt", Body=b"x")
    req = dict(REQUEST, OutputDataConfig={"S3OutputPath": "s3://gw-adopt/out"},
               ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
               InputDataConfig=[{"ChannelName": "train", "DataSource": {"S3DataSource": {
                   "S3DataType": "S3Prefix", "S3Uri": "s3://gw-adopt/data/", "S3DataDistributionType": "FullyReplicated"}}}])
    gw = TrainingJobGateway(client)
    first, created = gw.ensure_training_job(req)
    again, created_again = gw.ensure_training_job(req)
    assert (created, created_again) == (True, False)
    assert again["TrainingJobArn"] == first["TrainingJobArn"]
    foreign = dict(req, Tags=[{"Key": "llamaops.dev/uid", "Value": "someone-else"}])
    with pytest.raises(TerminalError, match="belongs to another resource"):
        gw.ensure_training_job(foreign)
    gw.stop_training_job(req["TrainingJobName"])
    assert gw.stop_training_job("no-such-job") is False
