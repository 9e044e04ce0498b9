"""LMI (DJL Serving) custom Python entry point for the batching engine: `handle(inputs)`.

serving.properties names it (`option.entryPoint=model.py`); DJL passes up to `batch_size`
requests per call, which go into the shared engine together with any other in-flight calls, and
each request's answer, or its own 400 error, goes back at its batch index."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_source import ServeSettings, load_engine, settings_from_properties  # noqa: E402
from request_params import RequestError, parse_request  # noqa: E402

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


def _answer(engine, body):
    """(status, payload) for one request body; never raises for a client error."""
    try:
        prompts, params, many = parse_request(body)
        futures = [engine.submit(p, params) for p in prompts]
    except RequestError as err:
        return err.status, err.to_json()
    return 200, futures, params, many


def handle(inputs):
    from djl_python import Output

    if inputs.is_empty():  # DJL's warm-up call at model load
        get_engine(inputs.get_properties())
        return None
    engine = get_engine(inputs.get_properties())
    outputs = Output()
    batch = inputs.get_batches()
    pending = []
    for i, item in enumerate(batch):
        try:
            body = item.get_as_json()
        except Exception as err:
            pending.append((i, (400, {"code": 400, "error": f"body: not valid JSON ({err})", "field": "body"})))
            continue
        pending.append((i, _answer(engine, body)))
    # Every request is queued before any is awaited, so they share the engine's batch.
    for i, answer in pending:
        if answer[0] != 200:
            status, payload = answer
            outputs.add_as_json({"code": status, "error": payload["error"], "field": payload.get("field")},
                                batch_index=i)
            continue
        _, futures, params, many = answer
        try:
            results = [{"generated_text": f.result().text} for f in futures]
            outputs.add_as_json(results if many else results[0], batch_index=i)
        except Exception as err:
            log.exception("generation failed")
            outputs.add_as_json({"code": 500, "error": f"generation failed: {err}"}, batch_index=i)
    return outputs
