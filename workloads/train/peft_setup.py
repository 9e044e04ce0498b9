"""Parameter-efficient fine-tuning through PEFT: LoRA on the loaded model (``peft=lora``), or on a
base loaded in 4-bit NF4 with bitsandbytes (``peft=qlora``, CUDA only); the adapter's state from the
gathered weights, and the adapter merged into a freshly loaded base.

New special tokens train through PEFT's ``trainable_token_indices``: only their rows of the input
embedding (and of an untied lm_head) train and go into the adapter, which stays small, where
``modules_to_save`` would copy both whole matrices into it."""
from __future__ import annotations

from pathlib import Path

import torch

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def enabled(hp) -> bool:
    return hp.peft != "none"


def base_model(model):
    """The transformers model under a PEFT wrapper (the model itself without one)."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def check_qlora_device() -> None:
    """peft=qlora needs CUDA and bitsandbytes; fail at start, naming the hyperparameter, otherwise."""
    from .hparams import HyperparameterError

    if not torch.cuda.is_available():
        raise HyperparameterError("peft", "qlora", "qlora needs a CUDA GPU: this machine has none (4-bit "
                                  "bitsandbytes kernels run on CUDA only); use peft=lora or a GPU instance type")
    try:
        import bitsandbytes  # noqa: F401  (GPU-only dependency: imported only here)
    except Exception as e:
        raise HyperparameterError("peft", "qlora", f"qlora needs bitsandbytes, which does not import here "
                                  f"({type(e).__name__}); install it in the image or use peft=lora") from None


def quantized_load_kwargs(hp, device: torch.device) -> dict:
    """from_pretrained arguments that load the base in 4-bit NF4 on this rank's GPU (qlora only)."""
    if hp.peft != "qlora":
        return {}
    from transformers import BitsAndBytesConfig

    # bf16 compute; fp16 where precision asks for it (GPUs without bf16)
    compute = torch.float16 if hp.precision == "fp16" else torch.bfloat16
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute)
    return {"quantization_config": quant, "device_map": {"": device.index or 0}}


def lora_config(hp, model, token_ids: list[int]):
    from peft import LoraConfig

    kwargs = {}
    if token_ids:
        targets = {"embed_tokens": list(token_ids)}
        out, emb = model.get_output_embeddings(), model.get_input_embeddings()
        if out is not None and out.weight is not emb.weight:  # tied lm_heads follow the embedding
            targets["lm_head"] = list(token_ids)
        kwargs["trainable_token_indices"] = targets
    return LoraConfig(task_type="CAUSAL_LM", r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                      target_modules=list(hp.lora_target_modules), bias="none", **kwargs)


def new_token_ids(hp, tokenizer) -> list[int]:
    return sorted(set(tokenizer.convert_tokens_to_ids(list(hp.add_special_tokens)))) if hp.add_special_tokens else []


def wrap(model, hp, tokenizer):
    """The model with LoRA adapters; only they (and the new tokens' rows) require gradients."""
    from peft import get_peft_model

    if hp.peft == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=hp.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        return get_peft_model(model, lora_config(hp, model, new_token_ids(hp, tokenizer)))
    except ValueError as e:  # PEFT names the target modules it did not find
        from .hparams import HyperparameterError

        raise HyperparameterError("lora_target_modules", ",".join(hp.lora_target_modules),
                                  f"{str(e).splitlines()[0]}; name Linear modules of this model") from None


def trainable_parameters(model) -> int:
    # ZeRO-3 partitions parameters (numel 0 here); ds_numel is the whole size
    return sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)


def adapter_state(model, full_state: dict) -> dict:
    """The adapter's tensors (PEFT's names, as PeftModel.from_pretrained reads them) out of the
    whole model's gathered state dict."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, state_dict=full_state, save_embedding_layers=False)


def save_adapter(model, adapter: dict, out: Path, base_model_uri: str) -> int:
    """adapter_model.safetensors + adapter_config.json -> bytes of the weights file.

    ``base_model_name_or_path`` is the base_model hyperparameter (an S3 URI, or the local directory
    a local run was given), never the node's scratch copy, which means nothing elsewhere."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = model.peft_config["default"]
    config.base_model_name_or_path = base_model_uri
    config.save_pretrained(str(out))
    return (out / ADAPTER_WEIGHTS).stat().st_size


def merged_model(model_dir: Path, adapter_dir: Path, vocab_size: int, dtype: torch.dtype):
    """The base from ``model_dir`` (full precision, also for qlora), grown to ``vocab_size``,
    with the saved adapter merged into its weights -> a plain transformers model on the CPU."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from .compat import dtype_kwargs

    base = AutoModelForCausalLM.from_pretrained(model_dir, **dtype_kwargs(dtype))
    if base.get_input_embeddings().weight.shape[0] != vocab_size:
        # the new tokens' rows come from the adapter (trainable_token_indices stores their values)
        base.resize_token_embeddings(vocab_size, mean_resizing=False)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
