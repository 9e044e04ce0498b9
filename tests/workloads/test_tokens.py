"""New special tokens get explicitly initialised embedding rows; padding reuses EOS by default."""
from __future__ import annotations

import pytest
import torch

from train.schedule import lr_factor
from train.tokens import add_tokens, ensure_pad_token, init_new_rows


def test_normal_init_draws_from_the_initializer_distribution():
    w = torch.full((1000, 64), 7.0)
    init_new_rows(w, 200, "normal", 0.02, torch.Generator().manual_seed(0))
    assert torch.all(w[:200] == 7.0)
    new = w[200:]
    assert abs(float(new.mean())) < 1e-3 and abs(float(new.std()) - 0.02) < 1e-3


def test_mean_init_copies_the_mean_row():
    w = torch.randn(10, 4)
    old_mean = w[:8].mean(0)
    init_new_rows(w, 8, "mean", 0.02)
    assert torch.allclose(w[8], old_mean) and torch.allclose(w[9], old_mean)


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="new_token_init"):
        init_new_rows(torch.zeros(3, 2), 2, "zeros", 0.02)


def test_add_tokens_grows_both_matrices_and_tokenizes_them_whole(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    n = model.get_input_embeddings().weight.shape[0]
    before_out = model.get_output_embeddings().weight[:n].clone()
    assert add_tokens(model, tok, ("<|tool|>", "<|end_tool|>"), "mean") == 2
    emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb.shape[0] == out.shape[0] == n + 2
    assert torch.allclose(emb[n], emb[:n].mean(0), atol=1e-6)
    assert torch.allclose(out[n + 1], out[:n].mean(0), atol=1e-6)
    assert torch.equal(out[:n], before_out)
    assert tok("<|tool|>hi", add_special_tokens=False)["input_ids"][0] == n


def test_padding_reuses_eos_and_adds_no_token(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    size = len(tok)
    assert ensure_pad_token(tok) == tok.eos_token_id and len(tok) == size


def test_schedule_warms_up_then_decays():
    total, warm = 100, 10
    lrs = [lr_factor(s, total, warm, "cosine") for s in range(total)]
    assert lrs[0] < lrs[5] < lrs[9] < 1.0 and abs(lrs[10] - 1.0) < 1e-9
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01
    assert lr_factor(50, total, warm, "constant") == 1.0
    assert abs(lr_factor(55, total, warm, "linear") - 0.5) < 1e-9
