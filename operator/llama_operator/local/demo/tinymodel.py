"""A tiny Llama "base model" built locally, laid out exactly like a real one on S3 or disk
(config.json, model.safetensors, tokenizer files). There is no model hub here, so the demo and the
tests build one from a `LlamaConfig` and a byte-level BPE tokenizer trained on DailyDialog text.

Needs the `workloads` extra (torch, transformers, tokenizers)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from llama_operator import paths

DAILYDIALOG_ZIP_ENV = "LLAMA_OPERATOR_DAILYDIALOG_ZIP"


def dailydialog_zip() -> Path:
    """Where the DailyDialog archive lies: $LLAMA_OPERATOR_DAILYDIALOG_ZIP when set, else the
    repository's copy, data/dailydialog/daily-dialog.txt.zip."""
    override = os.environ.get(DAILYDIALOG_ZIP_ENV, "")
    path = Path(override) if override else paths.dailydialog_zip()
    if path.is_file():
        return path
    where = f"${DAILYDIALOG_ZIP_ENV} ({override})" if override else "the repository"
    raise FileNotFoundError(
        f"DailyDialog archive not found in {where}: expected {path}; it ships in the repository as "
        f"data/dailydialog/daily-dialog.txt.zip (or set {DAILYDIALOG_ZIP_ENV} to a copy)")


def dailydialog_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Unzip DailyDialog once into a cache folder and return the `datasets.load_from_disk` path."""
    cache = Path(cache_dir or os.environ.get("LLAMA_OPERATOR_CACHE", Path.home() / ".cache" / "llama-operator"))
    target = cache / "daily-dialog.txt"
    if not (target / "dataset_dict.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".unzip-{os.getpid()}"
        with zipfile.ZipFile(dailydialog_zip()) as archive:
            archive.extractall(tmp)
        os.replace(tmp / "daily-dialog.txt", target) if not target.exists() else None
    return target


def dailydialog_texts(split: str = "train", limit: int | None = None,
                      cache_dir: str | os.PathLike | None = None) -> Iterator[str]:
    """Plain text of DailyDialog rows (conversation turns and reply), for tokenizer training."""
    import datasets

    rows = datasets.load_from_disk(str(dailydialog_dir(cache_dir)))[split]
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    for row in rows:
        turns = [turn.split(":", 1)[-1] for turn in row["convo"].split("##")]
        yield " ".join(t for t in turns if t.strip()) + " " + row["response"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, chat_template: str | None = None):
    """A byte-level BPE tokenizer with Llama's special tokens (<s>, </s>, <unk>) and no pad token,
    as Llama ships; trainers reuse EOS or UNK for padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def build_tiny_llama(out_dir: str | os.PathLike, *, vocab_size: int = 512, hidden_size: int = 64,
                     num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                     intermediate_size: int = 128, max_position_embeddings: int = 2048,
                     tokenizer_rows: int = 2000, chat_template: str | None = None, seed: int = 0) -> Path:
    """Write a randomly initialised tiny Llama with its tokenizer to `out_dir`, as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(dailydialog_texts(limit=tokenizer_rows), vocab_size=vocab_size,
                                chat_template=chat_template)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # readable by the SMP and LMI images' transformers 4 too (docs/images.md)
    paths.load_workload("train/tokens.py").portable_tokenizer_files(out)
    return out
