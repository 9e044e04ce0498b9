"""One check for both kinds' specs, one error format: every bad field named as in the manifest."""

import pytest
import specdata

from llama_operator.spec import InvalidSpec, LlamaEndpointSpec, LlamaFinetuneSpec, deletion_policy, validate

KINDS = [(LlamaFinetuneSpec, specdata.FINETUNE_MIN), (LlamaEndpointSpec, specdata.ENDPOINT_MIN)]


@pytest.mark.parametrize("model,good", KINDS)
def test_a_good_spec_validates(model, good):
    assert validate(model, good).role_arn == specdata.ROLE


@pytest.mark.parametrize("model,good", KINDS)
@pytest.mark.parametrize("spec,said", [(None, "spec: required"), ([1, 2], "spec: must be an object, not list"),
                                       ("text", "spec: must be an object, not str"), (7, "not int")])
def test_a_spec_that_is_no_object_is_refused_with_the_fix(model, good, spec, said):
    with pytest.raises(InvalidSpec) as err:
        validate(model, spec)
    assert said in str(err.value) and str(err.value).endswith("(fix the manifest and apply it again)")


@pytest.mark.parametrize("model,good", KINDS)
def test_every_bad_field_is_named_in_one_message(model, good):
    bad = {**good, "roleArn": "not-an-arn", "resources": {**good["resources"], "instanceType": "g5.xlarge"},
           "surprise": 1}
    with pytest.raises(InvalidSpec) as err:
        validate(model, bad)
    message = str(err.value)
    for field in ("spec.roleArn:", "spec.resources.instanceType:", "spec.surprise:"):
        assert field in message, message
    assert message.count("; ") == 2  # one line, the problems separated


@pytest.mark.parametrize("spec,policy", [({"deletionPolicy": "Retain"}, "Retain"), ({"deletionPolicy": "Delete"}, "Delete"),
                                         ({}, "Delete"), (None, "Delete"), (["Retain"], "Delete"),
                                         ("Retain", "Delete"), ({"deletionPolicy": "retain"}, "Delete")])
def test_only_a_spec_that_says_retain_keeps_sagemaker_objects(spec, policy):
    assert deletion_policy(spec) == policy
