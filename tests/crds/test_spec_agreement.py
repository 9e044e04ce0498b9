"""The CRD schemas (as the API server applies them) and the pydantic models agree: same fields,
same defaults, and the same verdict and message on every valid, boundary and invalid input."""

import copy
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

import crdtools
import specdata
from llama_operator.paths import manifests_dir
from llama_operator.spec import LlamaEndpointSpec, LlamaFinetuneSpec

MODELS = {"llamafinetunes": LlamaFinetuneSpec, "llamaendpoints": LlamaEndpointSpec}
BASES = {
    "llamafinetunes": [specdata.FINETUNE_MIN, specdata.FINETUNE_DEEPSPEED, specdata.FINETUNE_SMP,
                       specdata.FINETUNE_LORA],
    "llamaendpoints": [specdata.ENDPOINT_MIN, specdata.ENDPOINT_VLLM, specdata.ENDPOINT_BATCHING,
                       specdata.ENDPOINT_ADAPTERS],
}


def pydantic_errors(kind, spec):
    try:
        MODELS[kind].model_validate(spec)
    except ValidationError as exc:
        return [e["msg"] for e in exc.errors()]
    return []


def _submodel(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        inner = _submodel(arg)
        if inner:
            return inner
    return None


def _compare_fields(schema, model, path):
    by_alias = {f.alias: f for f in model.model_fields.values()}
    assert set(by_alias) == set(schema["properties"]), path
    required = {a for a, f in by_alias.items() if f.is_required()}
    assert required == set(schema.get("required", [])), path
    for alias, field in by_alias.items():
        sub = schema["properties"][alias]
        if sub.get("type") == "object" and "properties" in sub:
            _compare_fields(sub, _submodel(field.annotation), f"{path}.{alias}")
        if "enum" in sub:
            literal = [a for a in typing.get_args(field.annotation)] or []
            flat = set()
            for a in [field.annotation, *literal]:
                if typing.get_origin(a) is typing.Literal:
                    flat |= set(typing.get_args(a))
            assert flat == set(sub["enum"]), f"{path}.{alias}"


@pytest.mark.parametrize("kind", MODELS)
def test_models_have_the_crd_fields_required_fields_and_enums(kind):
    _compare_fields(crdtools.spec_schema(kind), MODELS[kind], "spec")


@pytest.mark.parametrize("kind", MODELS)
def test_defaults_agree(kind):
    for base in BASES[kind]:
        by_api = crdtools.default(crdtools.spec_schema(kind), base)
        by_model = MODELS[kind].model_validate(base).to_body()
        assert by_model == by_api


def _leaves(schema, path=()):
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            yield from _leaves(sub, path + (key,))
        else:
            yield path + (key,), sub


def _set(spec, path, value):
    spec = copy.deepcopy(spec)
    node = spec
    for key in path[:-1]:
        node = node.setdefault(key, {})
    if value is _REMOVE:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return spec


_REMOVE = object()


def _mutations(sub):
    """(value, must_fail) probes for one field from its schema: bounds, enums, patterns. Values
    inside the bounds may still break a cross-field rule in some base spec, so only the
    out-of-bounds ones must fail; all must get the same verdict from both validators."""
    kind = sub.get("type")
    if kind in ("integer", "number"):
        step = 1 if kind == "integer" else 0.5
        if "minimum" in sub:
            lo = sub["minimum"]
            yield lo, bool(sub.get("exclusiveMinimum"))
            yield lo - step, True
            yield lo + step, None
        if "maximum" in sub:
            hi = sub["maximum"]
            yield hi, bool(sub.get("exclusiveMaximum"))
            yield hi + step, True
        if kind == "integer":
            yield 1.5, True
        yield "7", True
    elif kind == "string":
        for value in sub.get("enum", []):
            yield value, None
        if "enum" in sub:
            yield "Bogus", True
        if "pattern" in sub:
            yield "not a valid value", True
        if "maxLength" in sub:
            yield "s3://bkt/" + "a" * sub["maxLength"], True
        if "minLength" in sub:
            yield "", True
    elif kind == "boolean":
        yield True, None
        yield False, None
        yield "yes", True
    elif kind == "array":
        yield [], None
        yield ["a,b"] if "pattern" in sub["items"] else [""], True
        yield "x", True
    elif kind == "object":
        yield {"GOOD_NAME": "v"}, None
        yield {"1bad": "v"} if "environment" in str(sub.get("description", "")).lower() else {"aws:x": "v"}, True
        yield {"k": 5}, True
    yield _REMOVE, None


def _cases(kind):
    schema = crdtools.spec_schema(kind)
    for path, sub in _leaves(schema):
        for base in BASES[kind]:
            for value, must_fail in _mutations(sub):
                yield pytest.param(kind, base, path, value, must_fail,
                                   id=f"{'.'.join(path)}={value if value is not _REMOVE else '<absent>'}"
                                      f"@{BASES[kind].index(base)}")


@pytest.mark.parametrize("kind,base,path,value,must_fail", [c for k in MODELS for c in _cases(k)])
def test_api_server_and_model_give_the_same_verdict(kind, base, path, value, must_fail):
    spec = _set(base, path, value)
    by_api = crdtools.validate_spec(kind, spec)
    by_model = pydantic_errors(kind, spec)
    assert bool(by_api) == bool(by_model), (by_api, by_model)
    if must_fail:
        assert by_api
    # A cross-field rule says the same thing in both places.
    _, cel = crdtools.validate_spec_parts(kind, spec)
    if cel:
        assert any(c in m for c in cel for m in by_model), (cel, by_model)


def _examples():
    for path in sorted((Path(manifests_dir()) / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion", "").startswith("llamaops.dev/"):
                yield pytest.param(doc, id=f"{path.name}:{doc['metadata']['name']}")


@pytest.mark.parametrize("doc", list(_examples()))
def test_examples_are_valid_for_the_api_server_and_the_models(doc):
    kind = {"LlamaFinetune": "llamafinetunes", "LlamaEndpoint": "llamaendpoints"}[doc["kind"]]
    assert crdtools.schema_errors(crdtools.root_schema(kind), doc) == []
    assert crdtools.validate_spec(kind, doc["spec"]) == []
    model = MODELS[kind].model_validate(doc["spec"])
    assert model.to_body() == crdtools.default(crdtools.spec_schema(kind), doc["spec"])


def test_every_example_file_is_there():
    names = {p.name for p in (Path(manifests_dir()) / "examples").glob("*.yaml")}
    assert {"finetune.yaml", "endpoint.yaml", "finetune-local.yaml", "endpoint-local.yaml"} <= names


def test_the_documented_example_is_valid():
    text = (Path(manifests_dir()).parent / "docs" / "spec.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    docs = list(yaml.safe_load_all(block))
    assert [d["kind"] for d in docs] == ["LlamaFinetune", "LlamaEndpoint"]
    for doc in docs:
        kind = {"LlamaFinetune": "llamafinetunes", "LlamaEndpoint": "llamaendpoints"}[doc["kind"]]
        assert crdtools.validate_spec(kind, doc["spec"]) == []
        MODELS[kind].model_validate(doc["spec"])
