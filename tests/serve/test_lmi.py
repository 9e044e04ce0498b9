"""LMI artifacts: what the operator puts in an endpoint's code prefix, and that it serves."""

import importlib.util
import json
import sys
import types

import pytest

from conftest import SERVE_DIR
from lmi import ArtifactError, lmi_environment, render_artifacts
from model_source import parse_properties, resolve_model, settings_from_properties


def test_vllm_properties():
    files = render_artifacts("vllm", "s3://bucket/models/ft-1/", {"tensor_parallel_degree": 4, "dtype": "fp16",
                                                                 "max_rolling_batch_size": 64})
    assert set(files) == {"serving.properties"}
    props = parse_properties(files["serving.properties"])
    assert props["engine"] == "Python" and props["option.rolling_batch"] == "vllm"
    assert props["option.model_id"] == "s3://bucket/models/ft-1/"
    assert props["option.tensor_parallel_degree"] == "4" and props["option.dtype"] == "fp16"
    assert props["option.max_rolling_batch_size"] == "64"
    assert lmi_environment("vllm", "s3://b/m/", {})["OPTION_ROLLING_BATCH"] == "vllm"


def test_batching_artifacts_are_self_contained_and_round_trip(tmp_path):
    files = render_artifacts("batching", "s3://bucket/m/", {"max_rolling_batch_size": 16, "max_wait_ms": 25,
                                                            "max_new_tokens": 100})
    assert {"serving.properties", "model.py", "batching_engine.py", "request_params.py"} <= set(files)
    props = parse_properties(files["serving.properties"])
    assert props["option.entryPoint"] == "model.py" and props["batch_size"] == "16"
    settings = settings_from_properties(props, tmp_path)
    assert (settings.engine, settings.max_batch_size, settings.max_wait_ms, settings.default_max_new_tokens,
            settings.dtype) == ("batching", 16, 25.0, 100, "bfloat16")
    # The rendered modules import each other and nothing from the operator.
    for name, text in files.items():
        assert "llama_operator" not in text, name


@pytest.mark.parametrize("engine, settings, field", [
    ("tgi", {}, "engine"),
    ("vllm", {"dtype": "int3"}, "settings.dtype"),
    ("vllm", {"max_rolling_batch_size": 0}, "settings.max_rolling_batch_size"),
    ("vllm", {"max_wait_ms": 5}, "settings.max_wait_ms"),
    ("batching", {"tensor_parallel_degree": 2}, "settings.tensor_parallel_degree"),
    ("batching", {"speed": "max"}, "settings.speed"),
])
def test_bad_settings_are_named(engine, settings, field):
    with pytest.raises(ArtifactError) as err:
        render_artifacts(engine, "s3://b/m/", settings)
    assert str(err.value).startswith(field)


def test_model_py_handles_a_djl_batch_with_one_bad_request(tiny_model_dir, tmp_path, monkeypatch):
    """djl_python is not installable here; a minimal stand-in gives model.py the Input/Output
    calls it makes (get_properties, get_batches, get_as_json, add_as_json(batch_index))."""
    code = tmp_path / "code"
    code.mkdir()
    for name, text in render_artifacts("batching", str(tiny_model_dir), {"max_wait_ms": 20}).items():
        (code / name).write_text(text)
    props = parse_properties((code / "serving.properties").read_text())
    djl_props = {k.removeprefix("option."): v for k, v in props.items()}

    class Input:
        def __init__(self, bodies):
            self.bodies = bodies

        def is_empty(self):
            return not self.bodies

        def get_properties(self):
            return djl_props

        def get_batches(self):
            return [Input([b]) for b in self.bodies]

        def get_as_json(self):
            return json.loads(self.bodies[0])

    class Output:
        def __init__(self):
            self.items = {}

        def add_as_json(self, value, batch_index=None):
            self.items[batch_index] = value

    monkeypatch.setitem(sys.modules, "djl_python", types.SimpleNamespace(Input=Input, Output=Output))
    spec = importlib.util.spec_from_file_location("lmi_entry_point", code / "model.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    try:
        assert entry.handle(Input([])) is None  # DJL's warm-up call loads the model
        good = {"inputs": "Hello there", "parameters": {"max_new_tokens": 10, "temperature": 0}}
        bad = {"inputs": "Hello there", "parameters": {"temperature": "hot"}}
        out = entry.handle(Input([json.dumps(good), json.dumps(bad), "{oops", json.dumps(good)]))
        assert out.items[0] == out.items[3] and isinstance(out.items[0]["generated_text"], str)
        assert out.items[1]["code"] == 400 and out.items[1]["field"] == "parameters.temperature"
        assert out.items[2]["code"] == 400 and out.items[2]["field"] == "body"
    finally:
        entry._engine.close()
