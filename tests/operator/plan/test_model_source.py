"""Where a LlamaEndpoint's model comes from: an S3 URI, or a Completed LlamaFinetune in its namespace."""

import pytest

from llama_operator.plan import model_source
from llama_operator.spec import LlamaEndpointSpec, validate


def index(**finetunes):
    return {("team", name): [value] for name, value in finetunes.items()}


def test_model_from_s3_uri_needs_no_finetune():
    got, reason, _ = model_source.resolve_model({"model": {"s3Uri": "s3://bkt/m/"}}, "team", index())
    assert (got.model_s3_uri, got.adapters, reason) == ("s3://bkt/m/", {}, "ModelGiven")


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
    assert model_source.resolve_model({"model": {"fromFinetune": "tune"}}, "team", idx)[0].model_s3_uri == \
        "s3://bkt/out/job/model/"
    assert model_source.resolve_model({"model": {"fromFinetune": "tune"}}, "other", idx)[0] is None


LORA = {"phase": "Completed", "adapterS3Uri": "s3://bkt/out/job/adapter/", "baseModelS3Uri": "s3://bkt/base/",
        "peftRank": 32}


def test_a_lora_finetune_is_served_as_its_base_with_its_adapter_by_default():
    got, reason, message = model_source.resolve_model({"model": {"fromFinetune": "tune"}}, "team", index(tune=LORA))
    assert got == model_source.Resolved("s3://bkt/base/", {"tune": "s3://bkt/out/job/adapter/"}, "tune", 32)
    assert reason == "FinetuneCompleted" and "s3://bkt/out/job/adapter/" in message


def test_adapters_by_uri_and_by_finetune_on_one_base():
    spec = {"model": {"s3Uri": "s3://bkt/base", "adapters": [{"name": "sql", "s3Uri": "s3://bkt/a/sql/"},
                                                             {"name": "chat", "fromFinetune": "tune"}]}}
    got, _, message = model_source.resolve_model(spec, "team", index(tune=LORA))
    assert got.adapters == {"sql": "s3://bkt/a/sql/", "chat": "s3://bkt/out/job/adapter/"}
    assert got.default_adapter is None and got.max_adapter_rank == 32 and "sql, chat" in message


@pytest.mark.parametrize("spec,entry,reason,field", [
    ({"s3Uri": "s3://bkt/base/", "adapters": [{"name": "a", "fromFinetune": "tune"}]}, None, "FinetuneNotFound",
     "model.adapters[0].fromFinetune"),
    ({"s3Uri": "s3://bkt/base/", "adapters": [{"name": "a", "fromFinetune": "tune"}]}, {"phase": "Training"},
     "FinetuneNotCompleted", "tune"),
    ({"s3Uri": "s3://bkt/base/", "adapters": [{"name": "a", "fromFinetune": "tune"}]},
     {"phase": "Completed", "modelS3Uri": "s3://bkt/out/job/model/"}, "AdapterNotLoRA", "model.adapters[0].fromFinetune"),
    ({"s3Uri": "s3://bkt/other/", "adapters": [{"name": "a", "fromFinetune": "tune"}]}, LORA, "AdapterOfAnotherBase",
     "model.adapters[0].fromFinetune"),
    ({"fromFinetune": "tune", "adapters": [{"name": "tune", "s3Uri": "s3://bkt/a/"}]}, LORA, "AdapterNameTaken",
     "model.adapters[0].name"),
])
def test_an_adapter_that_cannot_be_served_names_its_field(spec, entry, reason, field):
    idx = index(tune=entry) if entry is not None else index()
    got, why, message = model_source.resolve_model({"model": spec}, "team", idx)
    assert got is None and why == reason and field in message
    assert (why in model_source.NEEDS_A_NEW_SPEC) == (reason not in ("FinetuneNotFound", "FinetuneNotCompleted"))


def test_the_index_carries_what_an_adapter_needs():
    spec = {"baseModel": {"s3Uri": "s3://bkt/base/"}, "method": {"peft": {"type": "lora", "r": 8}}}
    entry = model_source.finetune_entry("team", "tune", {"phase": "Completed", "adapterS3Uri": "s3://x/"}, spec=spec)
    assert entry[("team", "tune")] == {"phase": "Completed", "modelS3Uri": None, "adapterS3Uri": "s3://x/",
                                       "baseModelS3Uri": "s3://bkt/base/", "peftRank": 8, "failureReason": None}
    assert model_source.finetune_entry("team", "x", None, spec="not a dict")[("team", "x")]["peftRank"] is None


def test_invalid_spec_names_the_field():
    with pytest.raises(ValueError) as err:
        validate(LlamaEndpointSpec, {"model": {"s3Uri": "s3://bkt/m/"}, "resources": {"instanceType": "g5.xlarge"},
                                "roleArn": "arn:aws:iam::123456789012:role/x"})
    assert "spec.resources.instanceType" in str(err.value)


def test_the_adapter_rank_bound_is_the_specs_or_the_default_and_never_below_a_finetunes():
    one = {"s3Uri": "s3://bkt/base/", "adapters": [{"name": "a", "s3Uri": "s3://bkt/a/"}]}
    assert model_source.resolve_model({"model": one}, "team", index())[0].max_adapter_rank == 16
    assert model_source.resolve_model({"model": {**one, "maxAdapterRank": 8}}, "team", index())[0].max_adapter_rank == 8
    with_ft = {"fromFinetune": "tune", "maxAdapterRank": 8}
    assert model_source.resolve_model({"model": with_ft}, "team", index(tune=LORA))[0].max_adapter_rank == 32
    from llama_operator.paths import adapter_knob

    knob = adapter_knob("maxLoraRank")  # the CRD's bounds are the serving workload's
    import crdtools

    field = crdtools.spec_schema("llamaendpoints")["properties"]["model"]["properties"]["maxAdapterRank"]
    assert (field["minimum"], field["maximum"]) == (knob["minimum"], knob["maximum"])


@pytest.mark.parametrize("entry,reason,says", [
    (None, "FinetuneNotFound", "does not exist"),
    ({"phase": "InProgress"}, "FinetuneNotCompleted", "InProgress"),
    ({"phase": "Failed", "failureReason": "OOM"}, "FinetuneFailed", "OOM"),
    ({"phase": "Completed", "adapterS3Uri": "s3://bkt/out/j/adapter/"}, "FinetuneHasNoModel", "mergeAdapter"),
])
def test_a_finetunes_base_from_another_waits_or_is_refused_naming_the_field(entry, reason, says):
    idx = index(full=entry) if entry is not None else index()
    uri, got, message = model_source.resolve_base_model({"fromFinetune": "full"}, "team", "lora", idx)
    assert (uri, got) == (None, reason)
    assert says in message and ("baseModel.fromFinetune" in message or reason in ("FinetuneNotCompleted",
                                                                                 "FinetuneFailed"))


def test_a_finetunes_base_is_the_model_the_other_produced_not_itself():
    idx = index(full={"phase": "Completed", "modelS3Uri": "s3://bkt/out/j/model/"})
    assert model_source.resolve_base_model({"fromFinetune": "full"}, "team", "lora", idx)[0] == "s3://bkt/out/j/model/"
    assert model_source.resolve_base_model({"s3Uri": "s3://bkt/m/"}, "team", "lora", idx)[0] == "s3://bkt/m/"
    uri, reason, message = model_source.resolve_base_model({"fromFinetune": "lora"}, "team", "lora", idx)
    assert (uri, reason) == (None, "FinetuneFailed") and "itself" in message
