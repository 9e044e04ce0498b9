"""Where a LlamaEndpoint's model comes from: an S3 URI, or a Completed LlamaFinetune in its namespace."""

import pytest

from llama_operator.plan import model_source
from llama_operator.spec import LlamaEndpointSpec, validate


def index(**finetunes):
    return {("team", name): [value] for name, value in finetunes.items()}


def test_model_from_s3_uri_needs_no_finetune():
    uri, reason, _ = model_source.resolve_model({"model": {"s3Uri": "s3://bkt/m/"}}, "team", index())
    assert (uri, reason) == ("s3://bkt/m/", "ModelGiven")


@pytest.mark.parametrize("entry,reason", [
    (None, "FinetuneNotFound"),
    ({"phase": "InProgress"}, "FinetuneNotCompleted"),
    ({"phase": None}, "FinetuneNotCompleted"),
    ({"phase": "Completed", "modelS3Uri": None}, "FinetuneHasNoModel"),
    ({"phase": "Failed", "failureReason": "CUDA out of memory"}, "FinetuneFailed"),
    ({"phase": "Stopped"}, "FinetuneFailed"),
])
def test_model_from_finetune_not_ready(entry, reason):
    idx = index(tune=entry) if entry is not None else index()
    uri, got, message = model_source.resolve_model({"model": {"fromFinetune": "tune"}}, "team", idx)
    assert uri is None and got == reason and "tune" in message
    if entry and entry.get("failureReason"):
        assert "CUDA out of memory" in message


def test_model_from_completed_finetune_in_the_same_namespace_only():
    idx = index(tune={"phase": "Completed", "modelS3Uri": "s3://bkt/out/job/model/"})
    assert model_source.resolve_model({"model": {"fromFinetune": "tune"}}, "team", idx)[0] == "s3://bkt/out/job/model/"
    assert model_source.resolve_model({"model": {"fromFinetune": "tune"}}, "other", idx)[0] is None


def test_invalid_spec_names_the_field():
    with pytest.raises(ValueError) as err:
        validate(LlamaEndpointSpec, {"model": {"s3Uri": "s3://bkt/m/"}, "resources": {"instanceType": "g5.xlarge"},
                                "roleArn": "arn:aws:iam::123456789012:role/x"})
    assert "spec.resources.instanceType" in str(err.value)
