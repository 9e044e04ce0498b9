"""LMI artifacts for an endpoint's code prefix, rendered from engine settings (pure).

`render_artifacts(engine, model_id, settings)` returns filename -> text. Engine "vllm": a
serving.properties for LMI's vLLM rolling batch. Engine "batching": a serving.properties that
names our `model.py` entry point, plus model.py and the engine modules it imports, so the prefix
is self-contained (and sm_server.py, which serves the same prefix outside LMI)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGINES = ("vllm", "batching")
# Files the batching entry point needs beside it, copied verbatim.
BATCHING_SOURCES = ("model.py", "batching_engine.py", "request_params.py", "model_source.py", "sm_server.py")
DTYPES = ("bf16", "fp16", "fp32")

# settings key -> (serving.properties key, type, engines it applies to)
_KNOBS = {
    "tensor_parallel_degree": ("option.tensor_parallel_degree", int, ENGINES),
    "max_rolling_batch_size": ("option.max_rolling_batch_size", int, ENGINES),
    "max_model_len": ("option.max_model_len", int, ENGINES),
    "max_new_tokens": ("option.max_new_tokens", int, ("batching",)),
    "max_wait_ms": ("option.max_wait_ms", float, ("batching",)),
    "gpu_memory_utilization": ("option.gpu_memory_utilization", float, ("vllm",)),
}
DEFAULTS = {"dtype": "bf16", "tensor_parallel_degree": 1, "max_rolling_batch_size": 32}


class ArtifactError(ValueError):
    """A setting cannot be rendered; the message names it and what is accepted."""


def _check(engine: str, model_id: str, settings: dict) -> dict:
    if engine not in ENGINES:
        raise ArtifactError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    if not isinstance(model_id, str) or not model_id or any(c in model_id for c in "\n\r="):
        raise ArtifactError(f"model_id {model_id!r}: give an s3:// prefix or a path")
    merged = {**DEFAULTS, **(settings or {})}
    unknown = sorted(set(merged) - set(_KNOBS) - {"dtype"})
    if unknown:
        raise ArtifactError(f"settings.{unknown[0]}: unknown; known: dtype, {', '.join(_KNOBS)}")
    if merged["dtype"] not in DTYPES:
        raise ArtifactError(f"settings.dtype {merged['dtype']!r}: use one of {', '.join(DTYPES)}")
    for key, (_, kind, engines) in _KNOBS.items():
        if key not in merged:
            continue
        value = merged[key]
        if engine not in engines:
            raise ArtifactError(f"settings.{key}: applies to engine {', '.join(engines)}, not {engine}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)) \
                or value <= 0:
            raise ArtifactError(f"settings.{key} {value!r}: must be a positive {kind.__name__}")
    if engine == "batching" and merged["tensor_parallel_degree"] != 1:
        raise ArtifactError("settings.tensor_parallel_degree: the batching engine runs on one GPU; use 1, "
                            "or engine vllm for tensor parallelism")
    return merged


def serving_properties(engine: str, model_id: str, settings: dict | None = None) -> str:
    merged = _check(engine, model_id, settings or {})
    lines = ["engine=Python", f"option.model_id={model_id}", f"option.dtype={merged['dtype']}"]
    if engine == "vllm":
        lines += ["option.rolling_batch=vllm"]
    else:
        # DJL hands model.py batches of up to batch_size requests gathered for max_batch_delay ms;
        # the engine then batches across those calls too (rolling).
        lines += ["option.entryPoint=model.py", "option.rolling_batch=disable",
                  f"batch_size={int(merged['max_rolling_batch_size'])}",
                  f"max_batch_delay={int(merged.get('max_wait_ms', 10))}"]
    for key, (prop, kind, _) in _KNOBS.items():
        if key in merged:
            lines.append(f"{prop}={kind(merged[key])}")
    return "\n".join(lines) + "\n"


def render_artifacts(engine: str, model_id: str, settings: dict) -> dict[str, str]:
    """filename -> text for the endpoint's code prefix (see README.md)."""
    files = {"serving.properties": serving_properties(engine, model_id, settings)}
    if engine == "batching":
        for name in BATCHING_SOURCES:
            files[name] = (HERE / name).read_text()
    return files


def lmi_environment(engine: str, model_id: str, settings: dict | None = None) -> dict[str, str]:
    """The same configuration as LMI's OPTION_* container environment (for CreateModel)."""
    env = {}
    for line in serving_properties(engine, model_id, settings).splitlines():
        key, value = line.split("=", 1)
        if key.startswith("option."):
            env["OPTION_" + key[len("option."):].upper()] = value
    return env
