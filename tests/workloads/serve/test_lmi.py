"""LMI artifacts: what the operator puts in an endpoint's code prefix, and that it serves."""

import ast
import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import pytest

import lmi
from lmi import ArtifactError, lmi_environment, render_artifacts
from model_source import parse_properties, settings_from_properties


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


def test_vllm_tensor_parallel_degree_max_reaches_lmi():
    """LMI's `max`: each model copy over all GPUs of the instance (the operator's default for vllm)."""
    files = render_artifacts("vllm", "s3://b/m/", {"tensor_parallel_degree": "max"})
    assert parse_properties(files["serving.properties"])["option.tensor_parallel_degree"] == "max"
    assert lmi_environment("vllm", "s3://b/m/", {"tensor_parallel_degree": "max"})[
        "OPTION_TENSOR_PARALLEL_DEGREE"] == "max"


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


def test_the_batching_prefix_ships_every_serving_module_its_files_import():
    """model.py runs from the code prefix alone: a serving module that a shipped file imports, at
    the top or inside a function (decode_attention on a GPU), is shipped too."""
    serve = Path(lmi.__file__).parent
    modules = {p.stem for p in serve.glob("*.py")}
    shipped = set(render_artifacts("batching", "s3://b/m/", {}))
    for name in sorted(n for n in shipped if n.endswith(".py")):
        for node in ast.walk(ast.parse((serve / name).read_text())):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported = [node.module]
            else:
                continue
            for module in {m.split(".")[0] for m in imported} & modules:
                assert f"{module}.py" in shipped, f"{name} imports {module}, which the prefix lacks"


def test_batching_max_wait_ms_zero_is_no_wait():
    """spec.serving.maxWaitMs takes 0 (the CRD's minimum): a batch does not wait for more requests."""
    props = parse_properties(render_artifacts("batching", "s3://b/m/", {"max_wait_ms": 0})["serving.properties"])
    assert (props["option.max_wait_ms"], props["max_batch_delay"]) == ("0.0", "0")


@pytest.mark.parametrize("engine, settings, field", [
    ("tgi", {}, "engine"),
    ("vllm", {"dtype": "int3"}, "settings.dtype"),
    ("vllm", {"max_rolling_batch_size": 0}, "settings.max_rolling_batch_size"),
    ("vllm", {"max_wait_ms": 5}, "settings.max_wait_ms"),
    ("batching", {"max_wait_ms": -1}, "settings.max_wait_ms -1: must be a non-negative float"),
    ("batching", {"tensor_parallel_degree": 2}, "settings.tensor_parallel_degree"),
    ("batching", {"tensor_parallel_degree": "max"}, "settings.tensor_parallel_degree 'max': the batching engine "
                                                    "runs on one GPU"),
    ("vllm", {"tensor_parallel_degree": "all"}, "settings.tensor_parallel_degree 'all': must be a positive int, "
                                                "or 'max'"),
    ("batching", {"speed": "max"}, "settings.speed"),
])
def test_bad_settings_are_named(engine, settings, field):
    with pytest.raises(ArtifactError) as err:
        render_artifacts(engine, "s3://b/m/", settings)
    assert str(err.value).startswith(field)


class DjlStandIn:
    """A stand-in for djl-serving around a custom model.py (djl_python is not installable here).

    It models what decides each client's response (djl-serving's engines/python sources):
    - the Java side (PyPredictor.batchPredict) sends one request as it is, and several as one
      Input with a `batch_size` property and each request's content under `batch_<iii>.data` (and
      its properties, the HTTP headers among them, under `batch_<iii>.<name>`), which djl_python's
      Input.get_batches() splits again;
    - djl_python's Output: code, message, properties and content, where `add(..., batch_index=i)`
      keys the content `batch_<i>.<key>`;
    - PyPredictor.batchPredict splitting the batch's Output: a request sent alone gets the Output
      itself; in a batch, a code of 300 or more gives every request the whole Output, otherwise
      every request gets the batch's code and properties and its own `batch_<i>.` content (a
      content count other than the batch size is an error); the HTTP body is the response's
      `data` content, else its first (Input.getData)."""

    class Input:
        def __init__(self, properties, content):
            self.properties, self.content = properties, content  # content: [(key, bytes)]

        def is_empty(self):
            return not self.content

        def get_properties(self):
            return self.properties

        def get_property(self, key):
            return self.properties.get(key)

        def get_batches(self):
            if "batch_size" not in self.properties:
                return [self]
            batch = [DjlStandIn.Input({}, []) for _ in range(int(self.properties["batch_size"]))]
            for key, value in self.content:
                batch[int(key[6:9])].content.append((key[10:], value))
            for key, value in self.properties.items():
                if re.fullmatch(r"batch_\d{3}\..+", key):
                    batch[int(key[6:9])].properties[key[10:]] = value
            return batch

        def get_as_json(self):
            return json.loads(self.content[0][1].decode())

    class Output:
        def __init__(self, code=200, message="OK"):
            self.code, self.message, self.properties, self.content = code, message, {}, []

        def set_code(self, code):
            self.code = code
            return self

        def set_message(self, message):
            self.message = message
            return self

        def add_property(self, key, value):
            self.properties[key] = value
            return self

        def add(self, value, key=None, batch_index=None):
            if batch_index is not None:
                key = f"batch_{batch_index}.{'' if key is None else key}"
            self.content.append((key, value if isinstance(value, bytes) else json.dumps(value).encode()))
            return self

        def add_as_json(self, value, key=None, batch_index=None):
            return self.add(json.dumps(value).encode(), key=key, batch_index=batch_index)

    def __init__(self, properties):
        self.properties = properties

    def call(self, entry, bodies, headers=None):
        """(HTTP status, Content-Type, JSON body) each client gets for these request bodies
        (bytes or JSON values) and their HTTP headers, sent to `entry.handle` as DJL would send
        them together."""
        raw = [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]
        headers = headers or [{} for _ in raw]
        if len(raw) == 1:
            out = entry.handle(self.Input(dict(headers[0]), [("data", raw[0])]))
            responses = [(out.code, out.properties, out.content)]
        else:
            batch_props = {f"batch_{i:03d}.{k}": v for i, h in enumerate(headers) for k, v in h.items()}
            out = entry.handle(self.Input({"batch_size": str(len(raw)), **batch_props},
                                          [(f"batch_{i:03d}.data", b) for i, b in enumerate(raw)]))
            if out.code >= 300:
                responses = [(out.code, out.properties, out.content)] * len(raw)
            else:
                assert len(out.content) == len(raw), "djl: Batch output size mismatch"
                responses = [(out.code, out.properties, []) for _ in raw]
                for key, value in out.content:
                    m = re.fullmatch(r"batch_(\d+)\.(.*)", key or "")
                    assert m, f"djl: Unexpected batch output key: {key}"
                    responses[int(m.group(1))][2].append((m.group(2), value))
        return [self.answer(code, properties, content) for code, properties, content in responses]

    @staticmethod
    def answer(code, properties, content):
        data = dict(content).get("data", content[0][1])
        return code, properties.get("Content-Type"), json.loads(data.decode())

    def adapter_call(self, fn, properties):
        """What djl-serving's adapter management gets from model.py's register_adapter or
        unregister_adapter (called with the adapter's properties, no content)."""
        out = fn(self.Input(properties, []))
        return self.answer(out.code, out.properties, out.content)


@pytest.fixture(scope="module")
def lmi_entry(tiny_model_dir, tmp_path_factory):
    """model.py as LMI loads it from the rendered code prefix, behind the djl stand-in; with
    enable_lora and two free adapter slots of rank 8."""
    code = tmp_path_factory.mktemp("code")
    settings = {"max_wait_ms": 20, "enable_lora": True, "max_loras": 2, "max_lora_rank": 8}
    for name, text in render_artifacts("batching", str(tiny_model_dir), settings).items():
        (code / name).write_text(text)
    props = parse_properties((code / "serving.properties").read_text())
    djl = DjlStandIn({k.removeprefix("option."): v for k, v in props.items()})
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "djl_python", types.SimpleNamespace(Input=DjlStandIn.Input,
                                                                    Output=DjlStandIn.Output))
        spec = importlib.util.spec_from_file_location("lmi_entry_point", code / "model.py")
        entry = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(entry)
        assert entry.handle(DjlStandIn.Input(djl.properties, [])) is None  # DJL's warm-up call loads the model
        try:
            yield djl, entry
        finally:
            entry._engine.close()


GOOD = {"inputs": "Hello there", "parameters": {"max_new_tokens": 10, "temperature": 0}}
BAD_TEMPERATURE = {"inputs": "Hello there", "parameters": {"temperature": "hot"}}
BAD_TOP_P = {"inputs": "Hello there", "parameters": {"top_p": 2}}


def test_model_py_answers_each_request_of_a_djl_batch_at_its_index(lmi_entry):
    djl, entry = lmi_entry
    good, temp, body, again = djl.call(entry, [GOOD, BAD_TEMPERATURE, b"{oops", GOOD])
    # DJL gives the batch one status: 200, with each error in its request's body.
    assert {answer[:2] for answer in (good, temp, body, again)} == {(200, "application/json")}
    assert good == again and isinstance(good[2]["generated_text"], str)
    assert temp[2]["code"] == 400 and temp[2]["field"] == "parameters.temperature"
    assert body[2]["code"] == 400 and body[2]["field"] == "body"
    (detailed,) = djl.call(entry, [{**GOOD, "parameters": {**GOOD["parameters"], "details": True}}])
    assert detailed[0] == 200 and detailed[2]["details"]["generated_tokens"] >= 1


def test_model_py_error_status_reaches_the_client_when_djl_allows(lmi_entry):
    djl, entry = lmi_entry
    # A request DJL sends alone gets its own status.
    ((status, kind, payload),) = djl.call(entry, [BAD_TOP_P])
    assert (status, kind, payload["code"], payload["field"]) == (400, "application/json", 400, "parameters.top_p")
    # So does a batch whose requests all got the same error.
    assert djl.call(entry, [BAD_TOP_P, BAD_TOP_P]) == [(status, kind, payload)] * 2
    # Different errors in one batch: 200, each its own error body.
    temp, top_p = djl.call(entry, [BAD_TEMPERATURE, BAD_TOP_P])
    assert (temp[0], top_p[0]) == (200, 200)
    assert (temp[2]["field"], top_p[2]) == ("parameters.temperature", payload)


HEADER = "X-Amzn-SageMaker-Adapter-Identifier"


def test_model_py_registers_adapters_and_serves_them_by_the_header_property(lmi_entry, tiny_model_dir, tmp_path):
    from lora_adapters import write_random_adapter
    from transformers import AutoModelForCausalLM

    djl, entry = lmi_entry
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    sql = write_random_adapter(model, tmp_path / "sql", rank=4, seed=7, b_std=0.3)
    big = write_random_adapter(model, tmp_path / "big", rank=16, seed=8)
    ((_, _, base),) = djl.call(entry, [GOOD])
    assert djl.adapter_call(entry.register_adapter, {"name": "Sql-IC", "src": str(sql)}) == (
        200, "application/json", {"message": "Adapter Sql-IC registered"})
    try:
        ((status, _, tuned),) = djl.call(entry, [GOOD], headers=[{HEADER: "Sql-IC"}])
        assert status == 200 and tuned["generated_text"] != base["generated_text"]
        # In a DJL batch each request has its own headers: the adapter's and the base model's rows.
        answers = djl.call(entry, [GOOD, GOOD], headers=[{HEADER: "Sql-IC"}, {}])
        assert [a[2] for a in answers] == [tuned, base]
        conflict = {**GOOD, "parameters": {**GOOD["parameters"], "adapter": ""}}
        ((status, _, out),) = djl.call(entry, [conflict], headers=[{HEADER: "Sql-IC"}])
        assert (status, out["field"]) == (400, "parameters.adapter") and HEADER in out["error"]
        status, _, out = djl.adapter_call(entry.register_adapter, {"name": "Sql-IC", "src": str(sql)})
        assert (status, out["field"]) == (409, "name")
        status, _, out = djl.adapter_call(entry.register_adapter, {"name": "big", "src": str(big), "preload": "true"})
        assert (status, out["field"]) == (424, "r") and "max_lora_rank (8)" in out["error"]
        status, _, out = djl.adapter_call(entry.register_adapter, {"src": str(sql)})
        assert (status, out["field"]) == (400, "name")
    finally:
        assert djl.adapter_call(entry.unregister_adapter, {"name": "Sql-IC"}) == (
            200, "application/json", {"message": "Adapter Sql-IC unregistered"})
    ((status, _, out),) = djl.call(entry, [GOOD], headers=[{HEADER: "Sql-IC"}])
    assert (status, out["field"]) == (400, HEADER)
    status, _, out = djl.adapter_call(entry.unregister_adapter, {"name": "Sql-IC"})
    assert (status, out["error"]) == (404, "The adapter Sql-IC was not found")
