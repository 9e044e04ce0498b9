"""SageMaker's rules for names, duplicates, missing objects, tags and limits, seen through boto3."""

from __future__ import annotations

import pytest

from sagemaker_helpers import BUCKET, ECHO_IMAGE, ROLE, source_tar, training_request, unique, wait_job


def _code(err) -> str:
    return err.value.response["Error"]["Code"]


def test_duplicate_and_invalid_training_job_names(sm, s3):
    name = unique("dup")
    src = source_tar(s3, {"train.py": "print('hi')\n"}, f"src/{name}/sourcedir.tar.gz")
    sm.create_training_job(**training_request(name, src))
    with pytest.raises(sm.exceptions.ResourceInUse) as err:
        sm.create_training_job(**training_request(name, src))
    assert "must be unique" in err.value.response["Error"]["Message"]
    for bad in ("has_underscore", "-leading-dash", "x" * 64):
        with pytest.raises(sm.exceptions.ClientError) as err:
            sm.create_training_job(**training_request(bad, src))
        assert _code(err) == "ValidationException"
        assert "trainingJobName" in err.value.response["Error"]["Message"]
    with pytest.raises(sm.exceptions.ResourceNotFound):
        sm.describe_training_job(TrainingJobName=unique("missing"))
    bad_type = training_request(unique("badtype"), src)
    bad_type["ResourceConfig"]["InstanceType"] = "ml.nope.large"
    with pytest.raises(sm.exceptions.ClientError) as err:
        sm.create_training_job(**bad_type)
    assert _code(err) == "ValidationException" and "resourceConfig.instanceType" in str(err.value)
    wait_job(sm, name)


def test_model_config_endpoint_errors(sm):
    model = unique("m")
    sm.create_model(ModelName=model, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": ECHO_IMAGE, "ModelDataUrl": f"s3://{BUCKET}/none.tar.gz"})
    with pytest.raises(sm.exceptions.ClientError) as err:
        sm.create_model(ModelName=model, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": ECHO_IMAGE})
    assert _code(err) == "ValidationException" and "already existing model" in str(err.value)
    with pytest.raises(sm.exceptions.ClientError) as err:
        sm.create_model(ModelName="bad.name", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": ECHO_IMAGE})
    assert _code(err) == "ValidationException" and "modelName" in str(err.value)
    assert sm.describe_model(ModelName=model)["PrimaryContainer"]["Image"] == ECHO_IMAGE

    with pytest.raises(sm.exceptions.ClientError) as err:
        sm.create_endpoint_config(EndpointConfigName=unique("c"), ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": unique("nomodel"), "InstanceType": "ml.g5.2xlarge",
            "InitialInstanceCount": 1}])
    assert _code(err) == "ValidationException" and "Could not find model" in str(err.value)

    config = unique("c")
    sm.create_endpoint_config(EndpointConfigName=config, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.g5.2xlarge", "InitialInstanceCount": 1}])
    with pytest.raises(sm.exceptions.ClientError) as err:
        sm.create_endpoint_config(EndpointConfigName=config, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.g5.2xlarge",
            "InitialInstanceCount": 1}])
    assert _code(err) == "ValidationException" and "already existing endpoint configuration" in str(err.value)
    assert config in [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]]

    with pytest.raises(sm.exceptions.ClientError) as err:
        sm.describe_endpoint(EndpointName=unique("noep"))
    assert _code(err) == "ValidationException" and "Could not find endpoint" in str(err.value)
    with pytest.raises(sm.exceptions.ClientError) as err:
        sm.create_endpoint(EndpointName=unique("ep"), EndpointConfigName=unique("noconfig"))
    assert _code(err) == "ValidationException"

    with pytest.raises(sm.exceptions.ResourceLimitExceeded):
        big = unique("big")
        sm.create_endpoint_config(EndpointConfigName=big, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": model, "InstanceType": "ml.g5.2xlarge",
            "InitialInstanceCount": 99}])
        sm.create_endpoint(EndpointName=big, EndpointConfigName=big)

    sm.delete_endpoint_config(EndpointConfigName=config)
    sm.delete_model(ModelName=model)
    with pytest.raises(sm.exceptions.ClientError) as err:
        sm.describe_model(ModelName=model)
    assert _code(err) == "ValidationException"
    assert model not in [m["ModelName"] for m in sm.list_models()["Models"]]


def test_tags_round_trip(sm):
    model = unique("tagged")
    arn = sm.create_model(ModelName=model, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": ECHO_IMAGE},
                          Tags=[{"Key": "team", "Value": "llama"}])["ModelArn"]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "llamaops.dev/owner", "Value": "default/chat"}])
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}
    assert tags == {"team": "llama", "llamaops.dev/owner": "default/chat"}
    sm.delete_tags(ResourceArn=arn, TagKeys=["team"])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "llamaops.dev/owner", "Value": "default/chat"}]
    sm.delete_model(ModelName=model)
