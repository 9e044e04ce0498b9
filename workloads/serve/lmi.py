"""LMI artifacts for an endpoint's code prefix, rendered from engine settings (pure).

`render_artifacts(engine, model_id, settings, adapters=None)` returns filename -> text. Engine
"vllm": a serving.properties for LMI's vLLM rolling batch. Engine "batching": a serving.properties
that names our `model.py` entry point, plus model.py and the engine modules it imports, so the
prefix is self-contained (and sm_server.py, which serves the same prefix outside LMI). `adapters`
({name: s3 prefix}) adds LoRA adapters; see README.md for what each engine does with them."""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGINES = ("vllm", "batching")
# Files the batching entry point needs beside it, copied verbatim (defaults.json: the knobs'
# defaults, which model_source.py reads).
BATCHING_SOURCES = ("model.py", "batching_engine.py", "scheduler.py", "model_runner.py", "fused_layers.py",
                    "decode_attention.py", "lora_adapters.py", "request_params.py", "model_source.py", "sm_server.py",
                    "defaults.json")
# The serving knobs' defaults, shared with the operator and model_source.py (see defaults.json).
_TABLE = json.loads((HERE / "defaults.json").read_text())
KNOBS, ADAPTER_KNOBS = _TABLE["knobs"], _TABLE["adapterKnobs"]
ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# vLLM's LoRAConfig accepts only these max_lora_rank values (vllm/config.py, 0.5 to 0.8).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256)
DTYPES = ("bf16", "fp16", "fp32")
# LMI's tensor_parallel_degree "max": split each model copy over all GPUs of the instance (vllm only).
ALL_GPUS = "max"

# settings key -> (serving.properties key, type, engines it applies to); tensor_parallel_degree
# also takes ALL_GPUS, and only 1 with the batching engine.
_KNOBS = {
    "tensor_parallel_degree": ("option.tensor_parallel_degree", int, ENGINES),
    "max_rolling_batch_size": ("option.max_rolling_batch_size", int, ENGINES),
    "max_model_len": ("option.max_model_len", int, ENGINES),
    "max_new_tokens": ("option.max_new_tokens", int, ("batching",)),
    "max_wait_ms": ("option.max_wait_ms", float, ("batching",)),
    "gpu_memory_utilization": ("option.gpu_memory_utilization", float, ("vllm",)),
}
# Rendered only with adapters (both engines): settings key -> adapterKnobs entry.
_ADAPTER_SETTINGS = {"max_loras": "maxLoras", "max_lora_rank": "maxLoraRank"}
# settings key naming the adapter a request without one runs with (batching engine only)
DEFAULT_ADAPTER = "default_adapter"
# settings key: adapters may be registered at run time (SageMaker's adapter inference components),
# into max_loras slots, with or without adapters given at start (both engines)
ENABLE_LORA = "enable_lora"
# Knobs for which 0 means something (max_wait_ms 0: a batch does not wait for more requests).
_ZERO_OK = {"max_wait_ms"}


def knob_default(spec_field: str, engine: str):
    """What an absent knob (named as in the LlamaEndpoint spec) means for this engine."""
    default = KNOBS[spec_field]["default"]
    return default[engine] if isinstance(default, dict) else default


def defaults(engine: str) -> dict:
    """The settings rendered when not given; the batching engine's batch size is the spec's
    maxBatchSize, vllm's its maxRollingBatchSize."""
    batch = "maxRollingBatchSize" if engine == "vllm" else "maxBatchSize"
    return {"dtype": knob_default("dtype", engine), "tensor_parallel_degree": knob_default("tensorParallelDegree", engine),
            "max_rolling_batch_size": knob_default(batch, engine)}


class ArtifactError(ValueError):
    """A setting cannot be rendered; the message names it and what is accepted."""


def _check(engine: str, model_id: str, settings: dict) -> dict:
    if engine not in ENGINES:
        raise ArtifactError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
    if not isinstance(model_id, str) or not model_id or any(c in model_id for c in "\n\r="):
        raise ArtifactError(f"model_id {model_id!r}: give an s3:// prefix or a path")
    merged = {**defaults(engine), **(settings or {})}
    for key in (*_ADAPTER_SETTINGS, DEFAULT_ADAPTER, ENABLE_LORA):
        merged.pop(key, None)  # checked by _check_adapters
    unknown = sorted(set(merged) - set(_KNOBS) - {"dtype"})
    if unknown:
        raise ArtifactError(f"settings.{unknown[0]}: unknown; known: dtype, {', '.join(_KNOBS)}, "
                            f"{', '.join(_ADAPTER_SETTINGS)}, {DEFAULT_ADAPTER}, {ENABLE_LORA}")
    if merged["dtype"] not in DTYPES:
        raise ArtifactError(f"settings.dtype {merged['dtype']!r}: use one of {', '.join(DTYPES)}")
    tp = merged["tensor_parallel_degree"]
    if engine == "batching" and tp != 1:
        raise ArtifactError(f"settings.tensor_parallel_degree {tp!r}: the batching engine runs on one GPU; use 1, "
                            f"or engine vllm for tensor parallelism ({ALL_GPUS!r}: all GPUs of the instance)")
    for key, (_, kind, engines) in _KNOBS.items():
        if key not in merged:
            continue
        value = merged[key]
        if engine not in engines:
            raise ArtifactError(f"settings.{key}: applies to engine {', '.join(engines)}, not {engine}")
        if key == "tensor_parallel_degree" and value == ALL_GPUS:
            continue
        zero_ok = key in _ZERO_OK
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)) \
                or value < 0 or (value == 0 and not zero_ok):
            also = f", or {ALL_GPUS!r} (all GPUs of the instance)" if key == "tensor_parallel_degree" else ""
            what = "a non-negative" if zero_ok else "a positive"
            raise ArtifactError(f"settings.{key} {value!r}: must be {what} {kind.__name__}{also}")
    return merged


def _check_adapters(engine: str, adapters, settings: dict) -> tuple[dict[str, str], bool, int, int]:
    """(adapters, enable_lora, max_loras, max_lora_rank), or ArtifactError naming the bad entry."""
    if adapters is None:
        adapters = {}
    if not isinstance(adapters, dict):
        raise ArtifactError(f"adapters: give a mapping of adapter name to s3:// prefix, got {type(adapters).__name__}")
    for name, uri in adapters.items():
        if not isinstance(name, str) or not ADAPTER_NAME.match(name):
            raise ArtifactError(f"adapters.{name}: an adapter name is 1-63 lowercase letters, digits, '-' or '_', "
                                "starting with a letter or digit")
        if not isinstance(uri, str) or not uri.startswith("s3://") or len(uri) <= 5 \
                or any(c in uri for c in ",= \t\r\n#"):
            raise ArtifactError(f"adapters.{name} {uri!r}: give the adapter's s3:// prefix (no ',', '=', '#' or "
                                "spaces)")
    enable = _enable_lora(settings)
    values = {key: _adapter_knob(key, adapters, enable, settings) for key in _ADAPTER_SETTINGS}
    if engine == "batching" and adapters and values["max_loras"] < len(adapters):
        raise ArtifactError(f"settings.max_loras {values['max_loras']}: the batching engine holds every adapter; "
                            f"give at least {len(adapters)}")
    default = (settings or {}).get(DEFAULT_ADAPTER)
    if default is not None and (engine != "batching" or default not in adapters):
        raise ArtifactError(f"settings.{DEFAULT_ADAPTER} {default!r}: must name one of the adapters, with the "
                            "batching engine")
    if engine == "vllm" and (adapters or enable) and values["max_lora_rank"] not in VLLM_LORA_RANKS:
        raise ArtifactError(f"settings.max_lora_rank {values['max_lora_rank']}: vLLM takes one of "
                            f"{', '.join(map(str, VLLM_LORA_RANKS))}")
    return adapters, enable, values["max_loras"], values["max_lora_rank"]


def _enable_lora(settings: dict) -> bool:
    enable = (settings or {}).get(ENABLE_LORA, False)
    if not isinstance(enable, bool):
        raise ArtifactError(f"settings.{ENABLE_LORA} {enable!r}: must be true or false")
    return enable


def _adapter_knob(key: str, adapters: dict, enable: bool, settings: dict) -> int:
    """max_loras or max_lora_rank: rendered with adapters or enable_lora (0: not rendered)."""
    spec = ADAPTER_KNOBS[_ADAPTER_SETTINGS[key]]
    given = key in (settings or {})
    if not adapters and not enable:
        if given:
            raise ArtifactError(f"settings.{key}: applies only when adapters are given or {ENABLE_LORA} is true")
        return 0
    value = settings[key] if given else spec["default"]
    if value is None:  # max_loras' default: as many as the adapters
        if not adapters:
            raise ArtifactError(f"settings.{key}: with {ENABLE_LORA} and no adapters, give how many adapters may be "
                                f"registered at run time ({spec['minimum']} to {spec['maximum']})")
        value = len(adapters)
    if isinstance(value, bool) or not isinstance(value, int) or not spec["minimum"] <= value <= spec["maximum"]:
        raise ArtifactError(f"settings.{key} {value!r}: must be an integer in [{spec['minimum']}, "
                            f"{spec['maximum']}]")
    return value


def _adapter_lines(engine: str, adapters: dict[str, str], enable: bool, max_loras: int, max_rank: int,
                   default: str | None = None) -> list[str]:
    if not adapters and not enable:
        return []
    slots = [f"option.max_loras={max_loras}", f"option.max_lora_rank={max_rank}"]
    if engine == "batching":  # model_source.py pulls each prefix with s5cmd and loads it
        # enable_lora: LMI registers adapters at run time through model.py's register_adapter
        lines = ([f"option.adapters={','.join(f'{n}={u}' for n, u in adapters.items())}"] if adapters else []) \
            + (["option.enable_lora=true"] if enable else []) + slots
        return lines + ([f"option.default_adapter={default}"] if default else [])
    # LMI loads (with enable_lora) every directory under adapters/ beside this file or under the
    # downloaded option.model_id at start; it reads no adapter location from this file. The
    # comments say where each adapter has to be copied.
    return ["option.enable_lora=true", *slots] + [
        f"# adapter {n}: LMI loads it only from adapters/{n}/ beside this file or under option.model_id; "
        f"copy {u} there" for n, u in adapters.items()]


def _render(key: str, kind: type, value) -> str:
    return ALL_GPUS if key == "tensor_parallel_degree" and value == ALL_GPUS else str(kind(value))


def serving_properties(engine: str, model_id: str, settings: dict | None = None, adapters: dict | None = None) -> str:
    merged = _check(engine, model_id, settings or {})
    adapters, enable, max_loras, max_rank = _check_adapters(engine, adapters, settings or {})
    lines = ["engine=Python", f"option.model_id={model_id}", f"option.dtype={merged['dtype']}"]
    if engine == "vllm":
        lines += ["option.rolling_batch=vllm"]
    else:
        # DJL hands model.py batches of up to batch_size requests gathered for max_batch_delay ms;
        # the engine then batches across those calls too (rolling).
        lines += ["option.entryPoint=model.py", "option.rolling_batch=disable",
                  f"batch_size={int(merged['max_rolling_batch_size'])}",
                  f"max_batch_delay={int(merged.get('max_wait_ms', knob_default('maxWaitMs', engine)))}"]
    for key, (prop, kind, _) in _KNOBS.items():
        if key in merged:
            lines.append(f"{prop}={_render(key, kind, merged[key])}")
    lines += _adapter_lines(engine, adapters, enable, max_loras, max_rank, (settings or {}).get(DEFAULT_ADAPTER))
    return "\n".join(lines) + "\n"


def render_artifacts(engine: str, model_id: str, settings: dict, adapters: dict[str, str] | None = None) -> dict[str, str]:
    """filename -> text for the endpoint's code prefix (see README.md); adapters: {name: s3 prefix}
    of LoRA adapters to serve."""
    files = {"serving.properties": serving_properties(engine, model_id, settings, adapters)}
    if engine == "batching":
        for name in BATCHING_SOURCES:
            files[name] = (HERE / name).read_text()
    return files


def lmi_environment(engine: str, model_id: str, settings: dict | None = None,
                    adapters: dict | None = None) -> dict[str, str]:
    """The same configuration as LMI's OPTION_* container environment (for CreateModel)."""
    env = {}
    for line in serving_properties(engine, model_id, settings, adapters).splitlines():
        if line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        if key.startswith("option."):
            env["OPTION_" + key[len("option."):].upper()] = value
    return env
