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


def test_adapters_reach_the_serving_properties_and_the_hash():
    import specdata
    from llama_operator.plan.model_source import Resolved
    from llama_operator.spec import LlamaEndpointSpec

    spec = LlamaEndpointSpec.model_validate(specdata.ENDPOINT_ADAPTERS)
    common = dict(namespace="team", name="chat", uid="uid-1", region="us-west-2", source_s3_uri="s3://ops/llama/")
    one = Resolved("s3://bkt/base/", {"lora-ft": "s3://bkt/out/j/adapter/", "sql": "s3://bkt/adapters/sql/"},
                   "lora-ft", 32)
    plan = rollout.plan(spec, resolved=one, **common)
    props = dict(line.split("=", 1) for line in plan.code_files["serving.properties"].splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["option.model_id"] == "s3://bkt/base/"
    assert props["option.adapters"] == "lora-ft=s3://bkt/out/j/adapter/,sql=s3://bkt/adapters/sql/"
    assert (props["option.default_adapter"], props["option.max_lora_rank"]) == ("lora-ft", "32")
    retrained = Resolved(one.model_s3_uri, {**one.adapters, "lora-ft": "s3://bkt/out/j2/adapter/"}, "lora-ft", 32)
    assert rollout.plan(spec, resolved=retrained, **common).spec_hash != plan.spec_hash  # a new adapter rolls out
    assert rollout.plan(spec, resolved=one, **common).spec_hash == plan.spec_hash
