"""Special tokens: padding reuses EOS (or UNK) by default; new tokens get explicitly initialised
embedding rows instead of whatever ``resize_token_embeddings`` happens to leave there."""
from __future__ import annotations

import json
from pathlib import Path

import torch

def save_tokenizer(tokenizer, out) -> None:
    """save_pretrained, then make the files readable by every image's libraries (docs/images.md)."""
    tokenizer.save_pretrained(out)
    portable_tokenizer_files(Path(out))


def portable_tokenizer_files(model_dir: Path) -> None:
    """Tokenizer files the images' older libraries load too: transformers 5 names its fast
    tokenizer class TokenizersBackend, unknown to transformers 4 (PreTrainedTokenizerFast is the same
    class under both names), and tokenizers >= 0.20 writes BPE merges as pairs, which the SMP image's
    tokenizers 0.19 cannot read ("a b" strings read everywhere; byte-level BPE tokens hold no spaces)."""
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") == "TokenizersBackend":
        config_path.write_text(json.dumps({**config, "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))
    tok_path = model_dir / "tokenizer.json"
    if not tok_path.is_file():
        return
    tok = json.loads(tok_path.read_text())
    merges = tok.get("model", {}).get("merges") or []
    if merges and isinstance(merges[0], list) and not any(" " in a or " " in b for a, b in merges):
        tok["model"]["merges"] = [f"{a} {b}" for a, b in merges]
        tok_path.write_text(json.dumps(tok, ensure_ascii=False))


def ensure_pad_token(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    return tokenizer.pad_token_id


def init_new_rows(weight: torch.Tensor, n_old: int, mode: str, std: float,
                  generator: torch.Generator | None = None) -> None:
    """Fill rows ``n_old:`` of an embedding (or output projection) matrix in place.

    ``normal``: N(0, std) with the model's initializer_range, like a freshly built model.
    ``mean``: the mean of the existing rows (keeps the new tokens' logits near the average)."""
    if weight.shape[0] <= n_old:
        return
    with torch.no_grad():
        new = weight[n_old:]
        if mode == "mean":
            new.copy_(weight[:n_old].float().mean(dim=0, keepdim=True).to(weight.dtype).expand_as(new))
        elif mode == "normal":
            sample = torch.empty(new.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
            new.copy_(sample.to(weight.dtype))
        else:
            raise ValueError(f"new_token_init must be mean or normal, got {mode!r}")


def _gathered(weight):
    """Under ZeRO-3 a parameter is partitioned across ranks: gather it whole for the edit, and let
    rank 0's edit be what every rank keeps."""
    if not hasattr(weight, "ds_id"):
        import contextlib

        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([weight], modifier_rank=0)


def add_tokens(model, tokenizer, tokens: tuple[str, ...], mode: str, seed: int = 0) -> int:
    """Add ``tokens`` as special tokens, grow the embeddings and initialise the new rows. Returns
    how many were new to the tokenizer."""
    if not tokens:
        return 0
    n_old = model.config.vocab_size
    added = tokenizer.add_tokens(list(tokens), special_tokens=True)
    if len(tokenizer) <= n_old:
        return added
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    std = float(getattr(model.config, "initializer_range", 0.02))
    gen = torch.Generator().manual_seed(seed)
    emb = model.get_input_embeddings().weight
    with _gathered(emb):
        init_new_rows(emb, n_old, mode, std, gen)
    out = model.get_output_embeddings()
    if out is not None and out.weight is not emb:
        with _gathered(out.weight):
            init_new_rows(out.weight, n_old, mode, std, gen)
    return added
