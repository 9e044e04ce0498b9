"""Fast paths for fine-tuning a Llama on CUDA, each of which degrades to plain PyTorch elsewhere.

Imports cleanly on a CPU-only machine without triton or liger-kernel; nothing here imports
anything outside torch and transformers. The trainer calls, in order:

``available(device) -> dict[str, bool]``
    Which fast paths apply on ``device``: ``cuda``, ``bf16``, ``flex_attention`` (document-masked
    attention through ``torch.nn.attention.flex_attention``, compiled; CUDA only), ``liger``
    (liger-kernel importable and on CUDA), ``fused_adamw``.

``optimize_model(model, *, packed, fused_kernels=True, compile=False) -> model``
    With ``packed=True`` and flex attention available, switches the model's attention to
    ``"doc_flex"``: compiled flex attention over a block mask that skips every block that crosses
    two conversations (see ``packed_batch_kwargs``). A PEFT model is optimised through its base
    model (``unwrap``), keeping its adapters in the path (``liger_options``). Without flex, packed rows still get no
    attention across conversations: transformers builds a document mask from restarting
    ``position_ids`` when no ``attention_mask`` is passed, which ``packed_batch_kwargs`` ensures.
    With ``fused_kernels=True`` and liger-kernel on CUDA, patches this model instance with liger's
    RMSNorm, SwiGLU, RoPE and fused linear cross-entropy (the full logits are never materialised).
    With ``compile=True`` on CUDA, each decoder layer goes through ``torch.compile`` (inductor fuses
    norms, SwiGLU and RoPE itself, so liger then supplies only the fused linear cross-entropy);
    the first steps take about a minute longer. A string is passed on as torch.compile's ``mode``.
    Meant for training; generate with a model loaded afresh. Under DeepSpeed ZeRO-3 pass
    ``fused_kernels=False``: liger's fused cross-entropy reads ``lm_head.weight`` outside the
    module's forward, where ZeRO-3 has not gathered it.

``make_optimizer(params, lr, weight_decay, betas=(0.9, 0.95)) -> torch.optim.AdamW``
    ``params``: a module, ``named_parameters()`` pairs, or plain tensors. Matrices decay,
    vectors (norms, biases) do not, when names or shapes allow telling them apart. Fused AdamW
    on CUDA (one kernel for all parameters), foreach elsewhere.

``packed_batch_kwargs(input_ids, position_ids, labels=None) -> dict``
    Model kwargs for a packed batch: ``position_ids`` restart at 0 at each conversation's first
    token; labels at those first tokens are set to -100 so that no conversation is trained to
    predict the next one's start; ``use_cache=False``, without which transformers ignores the
    restarting positions whenever the model's config enables its KV cache. On CUDA with flex, adds ``doc_block_mask`` (consumed by the
    ``doc_flex`` attention, ignored by the others). Pass no ``attention_mask`` with it.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Iterable

import torch

DOC_FLEX = "doc_flex"
IGNORE_INDEX = -100


def _device(device: Any) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


@functools.lru_cache(maxsize=None)
def _provides(module: str, *names: str) -> bool:
    """Whether `module` imports here and has `names` (a broken install counts as absent)."""
    try:
        found = importlib.import_module(module)
    except Exception:
        return False
    return all(hasattr(found, n) for n in names)


def _has_flex() -> bool:
    return _provides("torch.nn.attention.flex_attention", "create_block_mask", "flex_attention")


def _has_liger() -> bool:
    return _provides("liger_kernel.transformers", "apply_liger_kernel_to_llama")


def _has_triton() -> bool:
    return _provides("triton")


def available(device: Any) -> dict[str, bool]:
    dev = _device(device)
    cuda = dev.type == "cuda" and torch.cuda.is_available()
    return {
        "cuda": cuda,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        # Flex attention runs compiled through triton; on the CPU it falls back to an eager
        # reference that is correct but slower than sdpa with a dense mask.
        "flex_attention": cuda and _has_triton() and _has_flex(),
        "liger": cuda and _has_triton() and _has_liger(),
        "fused_adamw": cuda,
    }


# --------------------------------------------------------------------------- attention


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def doc_flex_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                       doc_block_mask=None, **kwargs):
    """transformers attention function: query (B, H, S, D), key/value (B, Hkv, S, D) -> (B, S, H, D)."""
    if doc_block_mask is None:
        # Not a packed training batch (evaluation, generation): plain causal sdpa.
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    if dropout:
        raise ValueError("attention dropout is not supported with packed flex attention: set attention_dropout=0")
    from torch.nn.attention.flex_attention import flex_attention

    # Inside a compiled layer dynamo traces flex itself; eagerly it must be compiled on its own.
    fn = _compiled_flex() if query.is_cuda and not torch.compiler.is_compiling() else flex_attention
    out = fn(query, key, value, block_mask=doc_block_mask, scale=scaling,
             enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=None)
def _register_doc_flex() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(DOC_FLEX, doc_flex_attention)


def use_document_attention(model):
    """Switch ``model`` to the ``doc_flex`` attention (any device; eager flex on the CPU)."""
    _register_doc_flex()
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(DOC_FLEX)
    else:  # older transformers
        model.config._attn_implementation = DOC_FLEX
    return model


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """0-based conversation index of each token of a packed row, from restarting position ids."""
    starts = position_ids == 0
    return starts.long().cumsum(-1) - 1


def document_block_mask(position_ids: torch.Tensor):
    """Flex BlockMask: causal within a conversation, nothing across conversations."""
    from torch.nn.attention.flex_attention import create_block_mask

    docs = document_ids(position_ids)
    batch, seq = docs.shape

    def same_doc_causal(b, h, q, kv):
        return (docs[b, q] == docs[b, kv]) & (q >= kv)

    return create_block_mask(same_doc_causal, batch, None, seq, seq, device=docs.device,
                             _compile=docs.is_cuda)


def packed_batch_kwargs(input_ids: torch.Tensor, position_ids: torch.Tensor,
                        labels: torch.Tensor | None = None) -> dict:
    if position_ids.shape != input_ids.shape:
        raise ValueError(f"position_ids shape {tuple(position_ids.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}: one position per token, restarting at 0 per conversation")
    # transformers skips its packed-sequence mask whenever a KV cache exists, and the model makes one
    # when use_cache is on (the config default), so without this flag the fallback would leak.
    kwargs: dict[str, Any] = {"input_ids": input_ids, "position_ids": position_ids, "use_cache": False}
    if labels is not None:
        kwargs["labels"] = labels.masked_fill(position_ids == 0, IGNORE_INDEX)
    if available(input_ids.device)["flex_attention"]:
        kwargs["doc_block_mask"] = document_block_mask(position_ids)
    return kwargs


# --------------------------------------------------------------------------- model, optimizer


def optimize_model(model, *, packed: bool, fused_kernels: bool = True, compile: bool | str = False):
    dev = next(model.parameters()).device
    have = available(dev)
    mode = compile if isinstance(compile, str) else None
    compile = bool(compile) and have["cuda"] and _has_triton()
    if packed and have["flex_attention"]:
        use_document_attention(model)
    inner = unwrap(model)
    if fused_kernels and have["liger"] and getattr(inner.config, "model_type", "") == "llama":
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(**liger_options(inner, compile), model=inner)
    if compile:
        for layer in inner.model.layers:
            layer.compile(mode=mode)
    return model


def unwrap(model):
    """The transformers model under an adapter wrapper (PEFT's ``get_base_model``), else ``model``."""
    getter = getattr(model, "get_base_model", None)
    return getter() if callable(getter) else model


def liger_options(model, compile: bool | str = False) -> dict:
    """``apply_liger_kernel_to_llama`` switches for this model instance.

    Liger's triton kernels do not trace under dynamo; in compiled layers inductor fuses instead.
    Its SwiGLU MLP still calls gate/up/down_proj as modules, so adapters (LoRA) on them apply; the
    fused linear cross-entropy instead multiplies by ``lm_head.weight`` itself, which would bypass
    anything wrapping lm_head (a LoRA target, PEFT's trainable token rows): only a plain Linear
    lm_head gets it, any other keeps the ordinary head and loss."""
    head = model.get_output_embeddings()
    return {"rope": not compile, "rms_norm": not compile, "swiglu": not compile, "cross_entropy": False,
            "fused_linear_cross_entropy": type(head) is torch.nn.Linear}


def _param_groups(params, weight_decay: float) -> list[dict]:
    if isinstance(params, torch.nn.Module):
        params = params.named_parameters()
    items = [p for p in params]
    if items and isinstance(items[0], dict):  # already groups: respect them
        return items
    decay, no_decay = [], []
    for item in items:
        name, p = item if isinstance(item, tuple) else ("", item)
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name or name.endswith("bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(params: Iterable, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.Optimizer:
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    groups = _param_groups(params, weight_decay)
    first = next((p for g in groups for p in g["params"]), None)
    fused = first is not None and first.is_cuda and all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay,
                             fused=fused or None, foreach=None if fused else True)
