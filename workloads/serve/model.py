"""LMI (DJL Serving) custom Python entry point for the batching engine: `handle(inputs)`.

serving.properties names it (`option.entryPoint=model.py`); DJL passes up to `batch_size`
requests per call, which go into the shared engine together with any other in-flight calls, and
each request's answer, or its own error body, goes back at its batch index. DJL applies one HTTP
status to a whole batch, so an error's status is the response's only as `batch_output` says.
`register_adapter(inputs)` / `unregister_adapter(inputs)` are what djl-serving calls to add or
remove a LoRA adapter at run time (SageMaker's adapter inference components, or LMI's adapters/
directory with option.enable_lora); a request's X-Amzn-SageMaker-Adapter-Identifier header
arrives as its property of that name."""

from __future__ import annotations

import logging
import os
import sys
import threading
from http import HTTPStatus
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_source import ServeSettings, load_engine, settings_from_properties  # noqa: E402
from request_params import ADAPTER_HEADER, REGISTRATION_FIELDS, RequestError, parse_request  # noqa: E402
from sm_server import register, render_result, unregister  # noqa: E402

log = logging.getLogger("lmi_batching")
_engine = None
_lock = threading.Lock()


def _settings(properties: dict) -> ServeSettings:
    """DJL gives the properties with the `option.` prefix removed; model_id is resolved by LMI
    (it downloads s3:// model ids) into `model_id` or the model directory."""
    props = {("option." + k if k not in ("engine", "batch_size", "max_batch_delay") else k): str(v)
             for k, v in properties.items()}
    props.pop("option.model_id", None)
    base = Path(properties.get("model_id") or properties.get("model_dir") or os.getcwd())
    if not (base / "config.json").is_file() and properties.get("model_dir"):
        base = Path(properties["model_dir"])
    return settings_from_properties(props, base)


def get_engine(properties: dict):
    global _engine
    with _lock:
        if _engine is None:
            _engine = load_engine(_settings(properties))
    return _engine


def _queue(engine, item):
    """Start one request of the batch: (200, (futures, params, many)) once its prompts are queued
    on the engine, or (status, error payload) for a request refused as sent."""
    try:
        body = item.get_as_json()
    except Exception as err:
        return 400, {"code": 400, "error": f"body: not valid JSON ({err})", "field": "body"}
    try:
        prompts, params, many = parse_request(body, default_max_new_tokens=engine.default_max_new_tokens,
                                              adapters=engine.adapter_names,
                                              adapter_header=_property(item, ADAPTER_HEADER))
        return 200, ([engine.submit(p, params.for_prompt(i)) for i, p in enumerate(prompts)], params, many)
    except RequestError as err:
        return err.status, err.to_json()


def _property(item, key: str):
    """A request property (DJL passes HTTP headers as properties) whatever the case of its name:
    a proxy on the way may have changed the header's case."""
    properties = item.get_properties() or {}
    if key in properties:
        return properties[key]
    return next((v for k, v in properties.items() if k.lower() == key.lower()), None)


def _result(queued):
    status, value = queued
    if status != 200:
        return status, value
    futures, params, many = value
    try:
        results = [render_result(f.result(), params) for f in futures]
    except RequestError as err:  # its adapter was unregistered while it waited
        return err.status, err.to_json()
    except Exception as err:
        log.exception("generation failed")
        return 500, {"code": 500, "error": f"generation failed: {err}", "field": None}
    return 200, (results if many else results[0])


def batch_output(output_cls, answers):
    """One djl `Output` for the batch's (status, payload) answers, in batch order.

    djl-serving gives a whole batch one status (engines/python PyPredictor.batchPredict): below
    300 every request gets the batch's code and properties and its own `batch_<i>.` content; at
    300 or more every request gets the whole Output, whose body is its first content. A request
    DJL sends alone is not a batch: the Output is its response. So an error's own status reaches
    the client when the request is alone, or when every request of the batch got the same answer;
    otherwise the batch answers HTTP 200 and a request's error is its body,
    `{"code": <status>, "error": "...", "field": ...}`."""
    status, payload = answers[0]
    if status != 200 and all(answer == answers[0] for answer in answers):
        return single_output(output_cls, status, payload)
    outputs = output_cls()
    outputs.add_property("Content-Type", "application/json")
    for i, (_, payload) in enumerate(answers):
        outputs.add_as_json(payload, batch_index=i)
    return outputs


def single_output(output_cls, status: int, payload):
    """One djl `Output`: this status (and its phrase) and the JSON payload as its body."""
    outputs = output_cls()
    outputs.add_property("Content-Type", "application/json")
    if status != 200:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        outputs.set_code(status)
        outputs.set_message(phrase)
    outputs.add_as_json(payload, key="data")
    return outputs


def handle(inputs):
    from djl_python import Output

    if inputs.is_empty():  # DJL's warm-up call at model load
        get_engine(inputs.get_properties())
        return None
    engine = get_engine(inputs.get_properties())
    # Every request is queued before any is awaited, so they share the engine's batch.
    queued = [_queue(engine, item) for item in inputs.get_batches()]
    return batch_output(Output, [_result(q) for q in queued])


def _adapter_body(inputs) -> dict:
    """The registration as sm_server's POST /adapters body. djl-serving passes name, src and alias
    as properties; preload and pin as properties or (LMI's handlers read them so) as content."""
    properties = inputs.get_properties() or {}
    body = {k: properties[k] for k in REGISTRATION_FIELDS if properties.get(k) is not None}
    for key in ("preload", "pin"):
        if key not in body and hasattr(inputs, "contains_key") and inputs.contains_key(key):
            body[key] = inputs.get_as_string(key)
    return body


def _loaded_engine():
    """The engine, or None while the model is not loaded yet (DJL loads it at its warm-up call).
    Not under _lock: get_engine holds it for the whole load, and a registration then answers 503
    at once rather than wait."""
    return _engine


LOADING = (503, {"code": 503, "error": "the model is still loading; register adapters once it is loaded"})


def register_adapter(inputs):
    """djl-serving's adapter registration: load the adapter at `src` (a local directory, or an
    s3:// prefix) under `name` into a free slot; the answer's status and body are sm_server's
    POST /adapters ones (200, 400, 409, 424, 503)."""
    from djl_python import Output

    engine = _loaded_engine()
    status, payload = LOADING if engine is None else register(engine, _adapter_body(inputs))
    return single_output(Output, status, payload)


def unregister_adapter(inputs):
    """djl-serving's adapter unregistration (property `name`): 200, or 404 for an unknown name."""
    from djl_python import Output

    engine = _loaded_engine()
    name = (inputs.get_properties() or {}).get("name")
    if engine is None:
        status, payload = LOADING
    elif not isinstance(name, str) or not name:
        status, payload = 400, {"code": 400, "error": "name: give the adapter's name", "field": "name"}
    else:
        status, payload = unregister(engine, name)
    return single_output(Output, status, payload)
