"""What a finished job leaves behind, saved on global rank 0 from the weights gathered there.

Full fine-tune (peft=none): the model (safetensors, config, tokenizer, training_summary.json) goes
to output_s3_uri, or to SM_MODEL_DIR when that is empty.

peft=lora/qlora: the adapter (adapter_model.safetensors, adapter_config.json, tokenizer, summary)
goes to adapter_s3_uri, or to SM_MODEL_DIR/adapter/ when that is empty. With merge_adapter=true the
adapter merged into the base also goes where a full fine-tune's model goes; without it nothing
goes to output_s3_uri. SM_MODEL_DIR always gets training_summary.json."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

from . import peft_setup
from .backends import DTYPES
from .batches import log
from .compat import set_config_dtype
from .environment import JobPaths, Rank
from .s3sync import upload_dir
from .tokens import save_tokenizer

SUMMARY = "training_summary.json"
PROBE_ENV = "LLAMA_TRAIN_LOGITS_PROBE"


def node_scratch(name: str) -> Path:
    """A folder shared by the processes of one node for this job: torchrun's agent (our parent)
    is the same for all local ranks."""
    return Path(tempfile.gettempdir()) / f"llama-train-{os.getppid()}" / name


def save_and_push(backend, tokenizer, hp, paths: JobPaths, rank: Rank, summary: dict, base_dir: Path) -> None:
    """16-bit (or fp32) weights gathered to global rank 0, saved and pushed as the module docstring
    says. ``base_dir``: the local base model, which a merge loads afresh."""
    state = backend.full_state_dict(rank.is_main)
    if not rank.is_main:
        return
    paths.model_dir.mkdir(parents=True, exist_ok=True)
    dtype = DTYPES[hp.precision]
    module = backend.module
    if hp.peft != "none":  # before the cast: a qlora base holds packed 4-bit tensors, and only the adapter stays
        state = peft_setup.adapter_state(module, state)
    state = {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in state.items()}
    model_out = paths.model_dir if not hp.output_s3_uri else node_scratch("final-model")
    pushes: list[tuple[Path, str, str]] = []  # (folder, S3 URI, what)
    if hp.peft == "none":
        summary.update(outputs=["model"], adapter_bytes=None)
        _save_model(module, state, tokenizer, dtype, model_out)
        folders = [model_out]
        if hp.output_s3_uri:
            pushes.append((model_out, hp.output_s3_uri, "model"))
    else:
        adapter_out = paths.model_dir / "adapter" if not hp.adapter_s3_uri else node_scratch("final-adapter")
        nbytes = peft_setup.save_adapter(module, state, adapter_out, hp.base_model)
        save_tokenizer(tokenizer, adapter_out)
        summary.update(outputs=["adapter"] + (["model"] if hp.merge_adapter else []), adapter_bytes=nbytes)
        folders = [adapter_out]
        if hp.adapter_s3_uri:
            pushes.append((adapter_out, hp.adapter_s3_uri, "adapter"))
        if hp.merge_adapter:
            t0 = time.time()
            vocab = peft_setup.base_model(module).config.vocab_size
            merged = peft_setup.merged_model(base_dir, adapter_out, vocab, dtype)
            _save_model(merged, None, tokenizer, dtype, model_out)
            del merged
            log(f"[train] adapter merged into the base in {time.time() - t0:.1f}s")
            folders.append(model_out)
            if hp.output_s3_uri:
                pushes.append((model_out, hp.output_s3_uri, "merged model"))
    text = json.dumps(summary, indent=2)
    for folder in {*folders, paths.model_dir}:
        (folder / SUMMARY).write_text(text)
    for folder, uri, what in pushes:
        t0 = time.time()
        upload_dir(folder, uri)
        log(f"[train] {what} pushed to {uri} in {time.time() - t0:.1f}s")


def _save_model(module, state: dict | None, tokenizer, dtype: torch.dtype, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    module.config.use_cache = True
    set_config_dtype(module.config, dtype)
    module.save_pretrained(out, state_dict=state, safe_serialization=True)
    save_tokenizer(tokenizer, out)


def probe_logits(backend, path: Path, rank: Rank, device: torch.device) -> None:
    """The trained model's logits (eval mode) on fixed token ids, saved by rank 0 to ``path``, so
    that a test can check what the saved outputs reproduce. Every rank runs the forward: sharded
    models gather their weights in it."""
    vocab = peft_setup.base_model(backend.module).config.vocab_size
    ids = torch.arange(48) * 37 % vocab
    ids[-2:] = torch.tensor([vocab - 2, vocab - 1])  # the newest rows too (added special tokens)
    backend.train(False)
    with torch.no_grad():
        logits = backend.module(input_ids=ids[None].to(device), use_cache=False).logits.float().cpu()
    backend.train(True)
    if rank.is_main:
        torch.save({"input_ids": ids[None], "logits": logits}, path)
