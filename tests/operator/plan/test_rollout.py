"""The pure endpoint rollout plan: content hashes, code location, name prefixes."""

from llama_operator.plan import names, rollout


def test_hash_and_code_location():
    assert rollout.combined_hash("0123456789abcdef", "s3://a/") != rollout.combined_hash("0123456789abcdef", "s3://b/")
    assert len(rollout.combined_hash("0123456789abcdef", "s3://a/")) == 16
    assert rollout.code_base_uri("s3://ops/llama/", "s3://models/m/") == "s3://ops/llama"
    assert rollout.code_base_uri(None, "s3://models/m/") == "s3://models/llama-operator"


def test_names_prefix_covers_every_model_and_config_name():
    prefix = rollout.names_prefix("team", "chat", "uid-1")
    assert names.model_name("team", "chat", "uid-1", "abc").startswith(prefix)
    assert names.endpoint_config_name("team", "chat", "uid-1", "abc").startswith(prefix)
