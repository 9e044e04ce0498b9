"""workloads/serve/defaults.json, the one table of serving knobs, agrees with everything else that
states a knob's default, bounds or engines: the CRD, the pydantic spec, docs/spec.md, what the
operator renders for an endpoint, and the serving workload's own fallbacks."""

import inspect
import json
import re

import lmi
import model_source
import pytest
import yaml
from llama_operator.artifacts import endpoint_code
from llama_operator.paths import REPO_ROOT, crds_dir, serving_default, serving_defaults, workloads_dir
from llama_operator.plan.endpoint import serving_settings
from llama_operator.spec import LlamaEndpointSpec
from llama_operator.spec.endpoint import TP_ALL_GPUS, Serving
from model_source import parse_properties, settings_from_properties
from pydantic import ValidationError

TABLE = json.loads((workloads_dir() / "serve" / "defaults.json").read_text())["knobs"]
ENGINES = ("vllm", "batching")
NOT_A_KNOB = {"engine"}  # it picks the engine whose knobs these are
MODEL = "s3://bkt/models/m/"


def crd_serving() -> dict:
    crd = yaml.safe_load((crds_dir() / "llamaendpoints.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec["properties"]["serving"]["properties"]


def defaults_by_engine(knob: dict) -> dict:
    """engine -> default, for the engines the knob applies to."""
    d = knob["default"]
    return {e: (d[e] if isinstance(d, dict) else d) for e in knob["engines"]}


def endpoint(**serving) -> LlamaEndpointSpec:
    return LlamaEndpointSpec.model_validate({"model": {"s3Uri": MODEL}, "resources": {"instanceType": "ml.g5.2xlarge"},
                                             "roleArn": "arn:aws:iam::123456789012:role/sagemaker-llama-x",
                                             "serving": serving})


def rendered(spec: LlamaEndpointSpec) -> dict[str, str]:
    """serving.properties as the operator writes it for this spec."""
    files = endpoint_code.render(spec.serving.engine, MODEL, serving_settings(spec))
    return parse_properties(files["serving.properties"])


def same(text: str | None, value) -> bool:
    if text is None or value is None:
        return text is value
    if isinstance(value, str):
        return text == value
    try:
        return float(text) == value
    except ValueError:
        return False


def test_the_table_is_well_formed_and_everyone_reads_the_same_file():
    for name, knob in TABLE.items():
        assert set(knob["engines"]) <= set(ENGINES) and knob["engines"], name
        assert knob["property"].startswith("option."), name
        if isinstance(knob["default"], dict):
            assert set(knob["default"]) == set(knob["engines"]), name
    assert serving_defaults() == TABLE == lmi.KNOBS == model_source.KNOBS
    assert "defaults.json" in lmi.render_artifacts("batching", MODEL, {}), "model_source.py reads it beside itself"


def test_every_crd_serving_field_is_in_the_table_with_its_bounds_default_and_engines():
    crd = crd_serving()
    assert set(crd) - NOT_A_KNOB == set(TABLE)
    for name, knob in TABLE.items():
        prop = crd[name]
        for bound in ("minimum", "maximum"):
            assert prop.get(bound) == knob.get(bound), f"{name}.{bound}"
        assert prop.get("enum") == knob.get("values"), name
        if "default" in prop:
            assert prop["default"] == knob["default"], name
        stated = re.search(r"(?<=\. )Default ([^.]+)\.$", prop["description"])
        if stated:
            assert same(stated.group(1), knob["default"]) or (
                knob["default"] is None and stated.group(1) == "the model's"), name
        elif not isinstance(knob["default"], dict):
            assert "default" in prop, f"{name}: the CRD states no default"
        only = re.match(r"(\w+) only:", prop["description"])
        if only:
            assert knob["engines"] == [only.group(1)], name


def test_the_pydantic_spec_has_the_tables_bounds_and_leaves_the_rest_to_it():
    schema = Serving.model_json_schema(by_alias=True)["properties"]
    assert set(schema) - NOT_A_KNOB == set(TABLE)
    for name, knob in TABLE.items():
        prop = schema[name]
        typed = next((p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"), prop)
        for bound in ("minimum", "maximum"):
            assert typed.get(bound) == knob.get(bound), f"{name}.{bound}"
        assert typed.get("enum") == knob.get("values"), name
        # A field without a default of its own is filled by the operator from the table.
        assert prop["default"] is None or prop["default"] == knob["default"], name
    assert TABLE["tensorParallelDegree"]["default"]["vllm"] == TP_ALL_GPUS


def test_docs_spec_md_states_the_tables_defaults():
    rows = [line for line in (REPO_ROOT / "docs" / "spec.md").read_text().splitlines()
            if line.startswith("| `serving.")]
    seen = set()
    for row in rows:
        fields, default, meaning = [c.strip() for c in row.strip("|").split(" | ")][:3]
        names = [f.strip().strip("`").removeprefix("serving.") for f in fields.split(",")]
        values = default.split(", ") if len(names) > 1 else [default]
        assert len(values) == len(names), row
        for name, text in zip(names, values):
            if name in NOT_A_KNOB:
                continue
            seen.add(name)
            knob = TABLE[name]
            text = text.replace("`", "")
            if isinstance(knob["default"], dict):
                parts = text.split(";")
                for engine, value in knob["default"].items():
                    (part,) = [p for p in parts if engine in p]
                    assert re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", part), (name, engine)
            else:
                assert same(text, knob["default"]) or (knob["default"] is None and text == "model's"), name
            only = re.fullmatch(r"(\w+) only", meaning)
            if only:
                assert knob["engines"] == [only.group(1)], name
    assert seen == set(TABLE)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_operator_renders_the_tables_default_for_an_absent_knob(engine):
    props = rendered(endpoint(engine=engine))
    for name, knob in TABLE.items():
        if engine in knob["engines"]:
            assert same(props.get(knob["property"]), serving_default(name, engine)), name


@pytest.mark.parametrize("engine", ENGINES)
def test_a_knob_reaches_serving_properties_exactly_with_the_engines_it_applies_to(engine):
    for name, knob in TABLE.items():
        value = knob["minimum"] if "minimum" in knob else next(v for v in knob["values"] if v != knob["default"])
        try:
            props = rendered(endpoint(engine=engine, **{name: value}))
        except ValidationError:
            assert engine not in knob["engines"], f"{name}: the spec refuses it with {engine}"
            continue
        assert same(props.get(knob["property"]), value) == (engine in knob["engines"]), name


@pytest.mark.parametrize("engine", ENGINES)
def test_the_workloads_fallbacks_are_the_tables(engine, tmp_path):
    """What the serving files assume when serving.properties (or the caller) leaves a knob out."""
    batch = "maxBatchSize" if engine == "batching" else "maxRollingBatchSize"
    want = {name: serving_default(name, engine) for name in TABLE}
    got = settings_from_properties({"option.rolling_batch": "vllm"} if engine == "vllm" else {}, tmp_path)
    assert (got.max_batch_size, got.max_wait_ms, got.default_max_new_tokens, got.tensor_parallel_degree,
            got.max_model_len) == (want[batch], want["maxWaitMs"], want["maxNewTokens"], want["tensorParallelDegree"],
                                   want["maxModelLength"])
    props = parse_properties(lmi.render_artifacts(engine, MODEL, {})["serving.properties"])
    assert same(props["option.dtype"], want["dtype"])
    assert same(props["option.tensor_parallel_degree"], want["tensorParallelDegree"])
    assert same(props["option.max_rolling_batch_size"], want[batch])
    if engine == "batching":  # DJL's own batching in front of model.py
        assert same(props["batch_size"], want["maxBatchSize"]) and same(props["max_batch_delay"], want["maxWaitMs"])


def test_the_engine_and_its_settings_default_to_the_tables_batching_values(tmp_path):
    from batching_engine import BatchingEngine

    want = {name: serving_default(name, "batching") for name in TABLE}
    params = inspect.signature(BatchingEngine.__init__).parameters
    assert (params["max_batch_size"].default, params["max_wait_ms"].default,
            params["default_max_new_tokens"].default) == (want["maxBatchSize"], want["maxWaitMs"], want["maxNewTokens"])
    plain = model_source.ServeSettings(model_dir=tmp_path)  # a Hugging Face directory, no serving.properties
    assert (plain.max_batch_size, plain.max_wait_ms, plain.default_max_new_tokens, plain.tensor_parallel_degree,
            plain.max_model_len) == (want["maxBatchSize"], want["maxWaitMs"], want["maxNewTokens"],
                                     want["tensorParallelDegree"], want["maxModelLength"])


def test_the_adapter_knobs_defaults_are_what_every_reader_assumes(tmp_path):
    """adapterKnobs (no spec field yet): lmi.py renders them, model_source.py and the engine fall
    back to them."""
    from batching_engine import BatchingEngine

    table = json.loads((workloads_dir() / "serve" / "defaults.json").read_text())["adapterKnobs"]
    assert table == lmi.ADAPTER_KNOBS == model_source.ADAPTER_KNOBS and set(table) == {"maxLoras", "maxLoraRank"}
    adapters = {"a": "s3://b/a/", "b": "s3://b/b/"}
    for engine in ENGINES:
        props = parse_properties(lmi.render_artifacts(engine, MODEL, {}, adapters)["serving.properties"])
        assert props["option.max_lora_rank"] == str(table["maxLoraRank"]["default"])
        assert props["option.max_loras"] == str(len(adapters))  # default null: as many as adapters
    plain = model_source.ServeSettings(model_dir=tmp_path)
    assert (plain.max_loras, plain.max_lora_rank) == (table["maxLoras"]["default"], table["maxLoraRank"]["default"])
    params = inspect.signature(BatchingEngine.__init__).parameters
    assert params["max_lora_rank"].default == table["maxLoraRank"]["default"]
    assert params["max_loras"].default == table["maxLoras"]["default"]


def test_an_adapter_name_is_one_rule_from_the_crd_to_the_engine():
    import request_params
    from llama_operator.spec import endpoint as spec_endpoint

    crd = yaml.safe_load((crds_dir() / "llamaendpoints.yaml").read_text())
    model = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["model"]
    item = model["properties"]["adapters"]["items"]["properties"]["name"]
    assert item["pattern"] == spec_endpoint.ADAPTER_NAME == request_params.ADAPTER_NAME.pattern \
        == lmi.ADAPTER_NAME.pattern
