"""workloads/train/fastpath.py on a CPU-only machine, and the throughput benchmark's tiny config."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fastpath():
    spec = importlib.util.spec_from_file_location("fastpath_under_test", ROOT / "workloads/train/fastpath.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=256, max_position_embeddings=512,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def packed_row(lengths, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (1, sum(lengths)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    return ids, pos


def per_token(model, **kw):
    logits = model(**kw).logits.float()
    ids = kw["input_ids"]
    return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")


def alone_vs_packed(model, ids, pos, lengths, kwargs):
    packed = per_token(model, **kwargs)
    worst, at = 0.0, 0
    for n in lengths:
        alone = per_token(model, input_ids=ids[:, at:at + n])
        worst = max(worst, float((packed[at:at + n - 1] - alone).abs().max()))
        at += n
    return worst


def test_cpu_reports_no_gpu_paths(fastpath):
    have = fastpath.available("cpu")
    assert have == {"cuda": False, "bf16": False, "flex_attention": False, "liger": False, "fused_adamw": False}


def test_optimize_model_on_cpu_keeps_model_working(fastpath):
    model = tiny_llama()
    assert fastpath.optimize_model(model, packed=True, fused_kernels=True, compile=True) is model
    assert model.config._attn_implementation == "sdpa"
    ids, pos = packed_row([5, 7])
    out = model(**fastpath.packed_batch_kwargs(ids, pos, ids.clone()))
    assert torch.isfinite(out.loss)


def test_packed_kwargs_mask_labels_at_conversation_starts(fastpath):
    ids, pos = packed_row([4, 3, 5])
    kw = fastpath.packed_batch_kwargs(ids, pos, ids.clone())
    assert "doc_block_mask" not in kw  # CPU: transformers' own mask from position ids
    assert kw["labels"][0].tolist() == [-100] + ids[0, 1:4].tolist() + [-100] + ids[0, 5:7].tolist() \
        + [-100] + ids[0, 8:].tolist()
    with pytest.raises(ValueError, match="position_ids"):
        fastpath.packed_batch_kwargs(ids, pos[:, :-1])


def test_packed_loss_equals_unpacked_through_position_ids(fastpath):
    model = tiny_llama()
    lengths = [9, 17, 6, 12]
    ids, pos = packed_row(lengths)
    with torch.no_grad():
        masked = alone_vs_packed(model, ids, pos, lengths, fastpath.packed_batch_kwargs(ids, pos))
        leaky = alone_vs_packed(model, ids, pos, lengths,
                                {"input_ids": ids, "position_ids": torch.arange(ids.shape[1])[None]})
    assert masked < 1e-4
    assert leaky > 1e-2  # the comparison can tell attention across conversations apart


def test_packed_loss_equals_unpacked_through_flex_block_mask(fastpath):
    model = fastpath.use_document_attention(tiny_llama())
    lengths = [9, 17, 6, 12]
    ids, pos = packed_row(lengths, seed=1)
    kwargs = {"input_ids": ids, "position_ids": pos, "doc_block_mask": fastpath.document_block_mask(pos)}
    with torch.no_grad(), pytest.warns(UserWarning):  # eager flex on the CPU warns that it is unfused
        assert alone_vs_packed(model, ids, pos, lengths, kwargs) < 1e-4


def test_make_optimizer_splits_decay_and_is_not_fused_on_cpu(fastpath):
    model = tiny_llama()
    opt = fastpath.make_optimizer(model, lr=1e-4, weight_decay=0.1)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.1]
    norms = {id(p) for n, p in model.named_parameters() if "norm" in n}
    no_decay = next(g for g in opt.param_groups if g["weight_decay"] == 0.0)
    assert {id(p) for p in no_decay["params"]} == norms
    assert not opt.defaults.get("fused")
    with pytest.raises(ValueError, match="learning rate"):
        fastpath.make_optimizer(model, lr=0.0, weight_decay=0.0)


def test_benchmark_tiny_config_prints_side_by_side_table():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/train_throughput.py"), "--tiny"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    check = re.search(r'packing check .*"masked_max_abs": ([0-9.e-]+)', out)
    assert check and float(check.group(1)) < 1e-3
    lines = out.strip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    assert lines[header].split() == ["variant", "rows", "batch", "real_tok/s", "x_seed", "MFU", "peak_GiB", "step_s"]
    rows = {line.split()[0]: line.split() for line in lines[header + 1:]}
    assert set(rows) == {"seed", "packed-posids-sdpa-bs8"}
    assert rows["seed"][1:3] == ["pad", "192"] and rows["packed-posids-sdpa-bs8"][1:3] == ["pack", "256"]
    for cols in rows.values():
        assert float(cols[4].replace(",", "")) > 0  # real tokens per second
    assert rows["seed"][5] == "1.0"  # x_seed of the seed itself
