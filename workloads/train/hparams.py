"""Hyperparameters: parsed from ``--name value`` arguments (SageMaker passes every value as a
string, also in ``SM_HPS``) and validated before anything heavy is imported, so a bad value fails
the job at once with one line naming the parameter and the fix."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field


# every attention and MLP projection of a Llama decoder layer
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class HyperparameterError(ValueError):
    def __init__(self, name: str, value, fix: str):
        super().__init__(f"invalid hyperparameter {name}={value}: {fix}")
        self.name = name


@dataclass(frozen=True)
class Hyperparameters:
    method: str
    base_model: str
    zero_stage: int = 3
    smp_shard_degree: int = 0
    smp_tp_degree: int = 1
    output_s3_uri: str = ""
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_seq_length: int = 2048
    packing: bool = True
    gradient_checkpointing: bool = False
    precision: str = "bf16"
    attn_implementation: str = "auto"
    torch_compile: str = "auto"
    # method smp: "trainer" (Hugging Face Trainer), "own" (the job's loop), "auto" (the Trainer
    # where the installed transformers accepts a model sharded before it, 5.19 on; else own)
    smp_loop: str = "auto"
    add_special_tokens: tuple[str, ...] = field(default_factory=tuple)
    new_token_init: str = "normal"
    data_format: str = "auto"
    logging_steps: int = 10
    save_steps: int = 0
    seed: int = 42
    checkpoint_dir: str = ""  # "" = the job's checkpoints directory ($SAGEMAKER_BASE_DIR/checkpoints)
    # parameter-efficient fine-tuning (train/peft_setup.py): "none" trains every weight
    peft: str = "none"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = LLAMA_PROJECTIONS
    merge_adapter: bool = False  # also push the adapter merged into the base, as a full model
    adapter_s3_uri: str = ""  # "" = the adapter goes to SM_MODEL_DIR/adapter/


_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_CHOICES = {
    "method": ("deepspeed", "smp"),
    "lr_scheduler": ("cosine", "linear", "constant"),
    "precision": ("bf16", "fp16", "fp32"),
    "attn_implementation": ("auto", "sdpa", "flex_attention", "eager"),
    "torch_compile": ("auto", "off", "on", "max-autotune-no-cudagraphs"),
    "smp_loop": ("auto", "trainer", "own"),
    "new_token_init": ("mean", "normal"),
    "data_format": ("auto", "dailydialog", "chat_jsonl", "prepared"),
    "peft": ("none", "lora", "qlora"),
}
REQUIRED = ("method", "base_model")


def parse_argv(argv: list[str]) -> dict[str, str]:
    """``--name value`` / ``--name=value`` pairs -> dict (later values win)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise HyperparameterError(arg, "", "arguments must be --name value pairs")
        name = arg[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value = argv[i + 1]
            i += 2
        else:
            value = ""
            i += 1
        out[name.replace("-", "_")] = value
    return out


def raw_hyperparameters(argv: list[str]) -> dict[str, str]:
    """SM_HPS (JSON) overlaid by the command line; non-string JSON values become strings."""
    raw: dict[str, str] = {}
    hps = os.environ.get("SM_HPS")
    if hps:
        try:
            raw.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in json.loads(hps).items()})
        except ValueError:
            pass
    raw.update(parse_argv(argv))
    return raw


def _int(name, v, lo=None):
    try:
        x = int(str(v).strip())
    except ValueError:
        raise HyperparameterError(name, v, "must be an integer") from None
    if lo is not None and x < lo:
        raise HyperparameterError(name, v, f"must be an integer >= {lo}")
    return x


def _float(name, v):
    try:
        x = float(str(v).strip())
    except ValueError:
        raise HyperparameterError(name, v, "must be a number") from None
    if not math.isfinite(x):
        raise HyperparameterError(name, v, "must be a finite number")
    return x


def validate(raw: dict[str, str]) -> tuple[Hyperparameters, list[str]]:
    """-> (hyperparameters, names that were not recognised). Raises HyperparameterError."""
    names = {f.name for f in dataclasses.fields(Hyperparameters)}
    for name in REQUIRED:
        if not str(raw.get(name, "")).strip():
            hint = {"method": "set it to deepspeed or smp",
                    "base_model": "set it to an s3://bucket/prefix/ or a local model directory"}[name]
            raise HyperparameterError(name, "", f"required; {hint}")
    vals: dict = {}
    for name, value in raw.items():
        if name not in names:
            continue
        v = str(value).strip()
        if name in _CHOICES:
            v = v.lower()
            if v not in _CHOICES[name]:
                choices = ", ".join(_CHOICES[name][:-1]) + " or " + _CHOICES[name][-1]
                raise HyperparameterError(name, value, f"must be {choices}")
            vals[name] = v
        elif name == "zero_stage":
            x = _int(name, v)
            if x not in (1, 2, 3):
                raise HyperparameterError(name, value, "must be 1, 2 or 3")
            vals[name] = x
        elif name in ("smp_shard_degree", "save_steps"):
            vals[name] = _int(name, v, 0)
        elif name in ("smp_tp_degree", "per_device_batch_size", "gradient_accumulation_steps", "logging_steps"):
            vals[name] = _int(name, v, 1)
        elif name == "max_seq_length":
            vals[name] = _int(name, v, 16)
        elif name in ("max_steps", "seed"):
            x = _int(name, v)
            if name == "max_steps" and (x == 0 or x < -1):
                raise HyperparameterError(name, value, "must be a positive integer, or -1 to train by epochs")
            vals[name] = x
        elif name in ("epochs", "learning_rate"):
            x = _float(name, v)
            if x <= 0:
                raise HyperparameterError(name, value, "must be a number > 0")
            vals[name] = x
        elif name in ("warmup_ratio", "lora_dropout"):
            x = _float(name, v)
            if not 0 <= x < 1:
                raise HyperparameterError(name, value, "must be a number in [0, 1)")
            vals[name] = x
        elif name == "weight_decay":
            x = _float(name, v)
            if x < 0:
                raise HyperparameterError(name, value, "must be a number >= 0")
            vals[name] = x
        elif name == "lora_r":
            x = _int(name, v)
            if not 1 <= x <= 256:
                raise HyperparameterError(name, value, "must be an integer from 1 to 256 (8 to 64 is usual)")
            vals[name] = x
        elif name == "lora_alpha":
            vals[name] = _int(name, v, 1)
        elif name == "lora_target_modules":
            mods = tuple(m.strip() for m in v.split(",") if m.strip())
            if not mods:
                raise HyperparameterError(name, value, "must name at least one module, e.g. "
                                          + ",".join(LLAMA_PROJECTIONS))
            bad = [m for m in mods if not m.replace("_", "").replace(".", "").isalnum()]
            if bad:
                raise HyperparameterError(name, value, f"{bad[0]!r} is not a module name; give comma-separated "
                                          "names such as q_proj,v_proj")
            if len(set(mods)) != len(mods):
                raise HyperparameterError(name, value, "lists a module twice; give each module once")
            vals[name] = mods
        elif name in ("packing", "gradient_checkpointing", "merge_adapter"):
            if v.lower() not in _BOOL:
                raise HyperparameterError(name, value, "must be true or false")
            vals[name] = _BOOL[v.lower()]
        elif name == "add_special_tokens":
            toks = tuple(t.strip() for t in v.split(",") if t.strip())
            if len(set(toks)) != len(toks):
                raise HyperparameterError(name, value, "lists a token twice; give each new token once")
            vals[name] = toks
        elif name in ("output_s3_uri", "adapter_s3_uri"):
            if v and not v.startswith("s3://"):
                raise HyperparameterError(name, value, 'must be an s3://bucket/prefix/ URI or ""')
            vals[name] = v
        elif name in ("base_model", "checkpoint_dir"):
            vals[name] = v
    if vals["method"] == "smp":
        tp = vals.get("smp_tp_degree", 1)
        if tp > 1:
            try:
                import torch.sagemaker  # noqa: F401
            except Exception:
                raise HyperparameterError("smp_tp_degree", tp, "tensor parallelism needs the SageMaker "
                                          "model parallelism library (an SMP image); set 1 here") from None
    _check_peft(vals)
    unknown = sorted(n for n in raw if n not in names and not n.startswith("sagemaker_"))
    return Hyperparameters(**vals), unknown


def _check_peft(vals: dict) -> None:
    """Combinations that cannot run: refused before anything loads."""
    peft = vals.get("peft", "none")
    if peft == "none" and vals.get("merge_adapter"):
        raise HyperparameterError("merge_adapter", "true", "applies only with peft=lora or qlora; set false "
                                  "(a full fine-tune always saves the whole model)")
    if peft != "none" and vals["method"] == "smp" and vals.get("smp_tp_degree", 1) > 1:
        raise HyperparameterError("smp_tp_degree", vals["smp_tp_degree"], f"peft={peft} trains without tensor "
                                  "parallelism (SMP would replace the adapted projections); set 1 here")
    if peft == "qlora" and vals["method"] == "smp":
        # FSDP would shard bitsandbytes' packed 4-bit weights and their quantization state apart
        raise HyperparameterError("peft", "qlora", "qlora is not supported with method smp (FSDP cannot "
                                  "shard 4-bit weights here); use peft=lora, or method deepspeed with "
                                  "zero_stage 1 or 2")
    if peft == "qlora" and vals["method"] == "deepspeed" and vals.get("zero_stage", 3) == 3:
        # ZeRO-3 partitions parameters at load time, which bitsandbytes' 4-bit loading does not survive
        raise HyperparameterError("peft", "qlora", "qlora is not supported with zero_stage 3 (ZeRO-3 "
                                  "cannot partition 4-bit weights); set zero_stage to 1 or 2, or use peft=lora")
