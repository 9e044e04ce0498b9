"""The endpoint's code prefix: the LMI artifacts (serving.properties, and model.py for our
batching engine) rendered by `workloads/serve/lmi.py` and uploaded to S3 under a key named by
their content, so re-applies and restarts upload nothing new and two endpoints with the same
settings share one prefix.

The model itself is not copied: `option.model_id` points at the model's own S3 prefix and the
serving container pulls it at start (SageMaker downloads only this small prefix as model data)."""

from __future__ import annotations

import hashlib
from types import ModuleType
from typing import Any, Mapping

from llama_operator.artifacts.upload import put_missing
from llama_operator.paths import load_workload


def _lmi_module() -> ModuleType:
    return load_workload("serve/lmi.py")


def lmi_settings(engine: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The planner's engine knobs (plan.endpoint.serving_settings) in the renderer's vocabulary:
    the batching engine's batch size is LMI's rolling batch size; a tensor parallel degree of
    "max" (all GPUs of the instance) goes through to LMI for vllm. Knobs an engine does not take
    (a degree other than 1 for the one-GPU batching engine, whose default is 1) are dropped rather
    than rejected, since the spec's own rules already refused them."""
    out: dict[str, Any] = {}
    if settings.get("dtype") is not None:
        out["dtype"] = settings["dtype"]
    tp = settings.get("tensor_parallel_degree")
    if tp == "max" and engine == "vllm":
        out["tensor_parallel_degree"] = tp
    elif isinstance(tp, int) and not isinstance(tp, bool) and (engine == "vllm" or tp == 1):
        out["tensor_parallel_degree"] = tp
    if engine == "batching":
        for src, dst in (("max_batch_size", "max_rolling_batch_size"), ("max_wait_ms", "max_wait_ms"),
                         ("max_new_tokens", "max_new_tokens")):
            if settings.get(src) is not None:
                out[dst] = settings[src]
    else:
        for key in ("max_rolling_batch_size", "max_model_len"):
            if settings.get(key) is not None:
                out[key] = settings[key]
    if settings.get("enable_lora"):  # free adapter slots, filled at run time (adapter components)
        out["enable_lora"] = True
        out["max_loras"] = settings["max_loras"]
    rank = settings.get("max_lora_rank")  # given only with adapters (or free slots)
    if rank is not None:
        # vLLM sizes its adapter slots from a fixed list of ranks: the next one up
        out["max_lora_rank"] = rank if engine != "vllm" else next(
            (r for r in _lmi_module().VLLM_LORA_RANKS if r >= rank), rank)
    if settings.get("default_adapter") is not None and engine != "vllm":
        # LMI's vLLM has no default adapter: a request without `adapters` runs on the base model
        out["default_adapter"] = settings["default_adapter"]
    return out


def render(engine: str, model_s3_uri: str, settings: Mapping[str, Any],
           adapters: Mapping[str, str] | None = None) -> dict[str, str]:
    """{filename: text} of the LMI artifacts for this model and engine; `settings` as the
    planner gives them (see `lmi_settings`); `adapters`: LoRA adapters by name."""
    files = _lmi_module().render_artifacts(engine, model_s3_uri, lmi_settings(engine, settings),
                                           dict(adapters) if adapters else None)
    if not files:
        raise ValueError(f"render_artifacts({engine!r}) produced no files")
    return {str(k): str(v) for k, v in files.items()}


# What LMI's vLLM reads of a PEFT adapter directory (and what the fine-tunes write).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_copies(engine: str, code_prefix_uri: str, adapters: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """(source, destination) S3 object URIs that put each adapter where LMI's vLLM loads adapters
    from: adapters/<name>/ in the model directory, which is this code prefix. The batching engine
    pulls adapters from their own prefixes (option.adapters): nothing to copy."""
    if engine != "vllm" or not adapters:
        return []
    base = code_prefix_uri.rstrip("/")
    return [(f"{uri.rstrip('/')}/{f}", f"{base}/adapters/{name}/{f}")
            for name, uri in sorted(adapters.items()) for f in ADAPTER_FILES]


def content_hash(files: Mapping[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name].encode()
        h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def code_prefix(base_s3_uri: str, files: Mapping[str, str]) -> str:
    """s3://bucket/<base prefix>/endpoint-code/<sha256>/ for these files."""
    base = base_s3_uri.rstrip("/")
    return f"{base}/endpoint-code/{content_hash(files)[:32]}/"


def upload(s3, prefix_uri: str, files: Mapping[str, str]) -> bool:
    """Put the files under their content-addressed prefix (`code_prefix`) unless every one is
    already there; True when anything was sent."""
    return put_missing(s3, prefix_uri, {name: text.encode() for name, text in files.items()})
