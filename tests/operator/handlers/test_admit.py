"""Both kinds admit a spec the same way: its own rules first, then the namespace's role allowlist."""

import pytest
import specdata

from llama_operator.allowlist import RoleAllowlist
from llama_operator.handlers.app import App, Refused
from llama_operator.spec import LlamaEndpointSpec, LlamaFinetuneSpec

KINDS = [(LlamaFinetuneSpec, specdata.FINETUNE_MIN), (LlamaEndpointSpec, specdata.ENDPOINT_MIN)]
ALLOWLIST = RoleAllowlist.from_yaml(f"team-a: ['{specdata.ROLE}']\n")


def app(allowlist=None) -> App:
    return App(settings=None, sagemaker=None, s3=None, allowlist=allowlist)


@pytest.mark.parametrize("model,good", KINDS)
def test_an_allowed_spec_is_admitted(model, good):
    assert app(ALLOWLIST).admit(model, good, "team-a").role_arn == specdata.ROLE
    assert app().admit(model, good, "anywhere").role_arn == specdata.ROLE  # no allowlist: any role


@pytest.mark.parametrize("model,good", KINDS)
def test_a_role_the_namespace_may_not_use_is_refused_naming_spec_role_arn(model, good):
    with pytest.raises(Refused) as err:
        app(ALLOWLIST).admit(model, good, "team-b")
    assert err.value.reason == "RoleNotAllowed" and "spec.roleArn" in err.value.message


@pytest.mark.parametrize("model,good", KINDS)
def test_an_invalid_spec_is_refused_before_the_allowlist_is_asked(model, good):
    with pytest.raises(Refused) as err:
        app(ALLOWLIST).admit(model, {**good, "roleArn": "arn:aws:iam::123456789012:role/other"} | {"resources": []},
                             "team-b")
    assert err.value.reason == "InvalidSpec"
    assert err.value.message.startswith("spec rejected: spec.resources:")
