"""Packing changes no per-token loss: the proof that no attention crosses conversations."""
from __future__ import annotations

import pytest
import torch

from train import data as D
from prepare.render import tokenize_conversation
from prepare.sources import iter_dailydialog


@pytest.fixture(scope="module")
def conversations(tokenizer, dailydialog_path):
    rows = []
    for messages in iter_dailydialog(dailydialog_path, "train"):
        row = tokenize_conversation(tokenizer, messages, max_length=96)
        if row is not None:
            rows.append(row)
        if len(rows) == 12:
            break
    return rows


def per_token_losses(model, batch) -> dict[tuple, float]:
    """{(conversation index, position): loss} for every trained token in the batch."""
    with torch.no_grad():
        # use_cache=False: with a KV cache transformers ignores position_ids when building the mask
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits.float()
    out = {}
    labels = batch["labels"]
    for b in range(labels.shape[0]):
        pos = batch["position_ids"][b]
        D_ids = (pos == 0).long().cumsum(0) - 1
        for t in range(1, labels.shape[1]):
            if labels[b, t] != -100:
                loss = torch.nn.functional.cross_entropy(logits[b, t - 1][None], labels[b, t][None])
                out[(int(batch["tag"][b][int(D_ids[t])]), int(pos[t]))] = float(loss)
    return out


def tagged(rows, layout, pad_id):
    """Collated batch plus, per row, which source conversation each packed document is."""
    batch = D.collate(layout, pad_id)
    batch["tag"] = []
    for r in layout:
        ids = r["input_ids"]
        tags, start = [], 0
        for i, p in enumerate(r["position_ids"] + [0]):
            if i > 0 and p == 0:
                piece = ids[start:i]
                tags.append(next(k for k, s in enumerate(rows) if s["input_ids"] == piece))
                start = i
        batch["tag"].append(tags)
    return batch


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_give_the_same_per_token_loss_as_unpacked(tiny_base, tokenizer, conversations, attn):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation=attn).eval()
    pad = tokenizer.eos_token_id
    packed = D.pack(conversations, 256)
    assert len(packed) < len(conversations)  # several conversations share a row
    a = per_token_losses(model, tagged(conversations, packed, pad))
    b = per_token_losses(model, tagged(conversations, D.unpacked(conversations), pad))
    assert a.keys() == b.keys() and len(a) > 100
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst < 1e-4, worst


def test_concatenation_without_restarting_positions_does_change_the_loss(tiny_base, tokenizer, conversations):
    """The control: the same rows with one running position sequence let attention cross
    conversations, and the losses differ; the test above would catch a leak."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation="sdpa").eval()
    packed = D.pack(conversations, 256)
    leaky = [dict(r, position_ids=list(range(len(r["input_ids"])))) for r in packed]
    batch = D.collate(packed, tokenizer.eos_token_id)
    lb = D.collate(leaky, tokenizer.eos_token_id)

    def token_losses(b):
        with torch.no_grad():
            logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                 batch["labels"][:, 1:].flatten(), reduction="none")

    assert (token_losses(batch) - token_losses(lb)).abs().max() > 1e-2


def test_pack_keeps_every_token_once_and_fits_rows():
    rows = [{"input_ids": list(range(100 * i, 100 * i + n)), "labels": list(range(100 * i, 100 * i + n))}
            for i, n in enumerate([30, 50, 10, 64, 5, 40])]
    packed = D.pack(rows, 64)
    assert all(len(r["input_ids"]) <= 64 for r in packed)
    assert sorted(t for r in packed for t in r["input_ids"]) == sorted(t for r in rows for t in r["input_ids"])
    assert len(packed) == 4  # 199 tokens need at least 4 rows of 64
    for r in packed:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        assert all(r["labels"][i] == -100 for i in starts)  # no conversation predicts the next one's start


def test_shard_gives_every_rank_the_same_count():
    rows = [{"input_ids": [i]} for i in range(11)]
    parts = [D.shard(rows, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    assert len({x["input_ids"][0] for p in parts for x in p}) == 9


def test_collate_pads_to_a_fixed_width_as_its_own_document():
    rows = D.pack([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}], 16)
    batch = D.collate(rows, pad_id=0, pad_to=8)
    assert batch["input_ids"].shape == (1, 8)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert batch["labels"][0].tolist() == [-100, 6, 7, -100, 9, -100, -100, -100]
