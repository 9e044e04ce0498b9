import pytest

from llama_operator.allowlist import RoleAllowlist

TEXT = """
team-a:
  - arn:aws:iam::111122223333:role/sagemaker-team-a
team-b:
  - arn:aws:iam::111122223333:role/sagemaker-team-b-*
"*":
  - arn:aws:iam::111122223333:role/sagemaker-shared
"""


def test_each_namespace_gets_only_its_roles_and_the_shared_ones():
    allow = RoleAllowlist.from_yaml(TEXT)
    assert allow.check("team-a", "arn:aws:iam::111122223333:role/sagemaker-team-a") is None
    assert allow.check("team-b", "arn:aws:iam::111122223333:role/sagemaker-team-b-gpu") is None
    assert allow.check("team-c", "arn:aws:iam::111122223333:role/sagemaker-shared") is None
    refused = allow.check("team-a", "arn:aws:iam::111122223333:role/sagemaker-team-b-gpu")
    assert refused is not None and "spec.roleArn" in refused and "sagemaker-team-a" in refused


def test_a_namespace_missing_from_the_list_is_told_whom_to_ask():
    allow = RoleAllowlist.from_yaml("team-a: [arn:aws:iam::1:role/x]")
    message = allow.check("other", "arn:aws:iam::1:role/x")
    assert "has no SageMaker execution roles" in message


def test_no_allowlist_means_single_tenant():
    assert RoleAllowlist.from_file(None).check("any", "arn:aws:iam::1:role/anything") is None


def test_malformed_allowlist_is_refused_with_the_entry_named():
    with pytest.raises(ValueError, match="'team-a'"):
        RoleAllowlist.from_yaml("team-a: {role: x}")
