"""Training rows -> micro-batches. Pure functions over lists of token ids (no torch until
``collate``), so packing can be checked without a model.

Packing lays whole conversations end to end in rows of at most ``max_seq_length`` tokens;
``position_ids`` restart at 0 at each conversation's first token. Given ``position_ids`` and no
``attention_mask``, transformers builds a block-diagonal causal mask (one block per conversation)
for sdpa and eager attention, so no token attends to another conversation; the labels at each
conversation's first token are -100 so that no conversation is trained to predict the next one."""
from __future__ import annotations

import random
from typing import Iterable, Sequence

IGNORE_INDEX = -100


def truncate(rows: Iterable[dict], max_len: int) -> list[dict]:
    out = []
    for r in rows:
        ids, labels = r["input_ids"][:max_len], r["labels"][:max_len]
        if any(x != IGNORE_INDEX for x in labels[1:]):
            out.append({"input_ids": ids, "labels": labels})
    return out


def pack(rows: Sequence[dict], max_len: int) -> list[dict]:
    """First-fit-decreasing packing of conversations into rows of <= max_len tokens. Each packed
    row carries ``position_ids`` that restart per conversation."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(rows[i]["input_ids"])
        for b, free in enumerate(room):
            if free >= n:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_len - n)
    packed = []
    for members in bins:
        ids, labels, pos = [], [], []
        for i in sorted(members):
            r = rows[i]
            ids += r["input_ids"]
            labels += [IGNORE_INDEX] + list(r["labels"][1:])
            pos += list(range(len(r["input_ids"])))
        packed.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return packed


def unpacked(rows: Sequence[dict]) -> list[dict]:
    return [{"input_ids": list(r["input_ids"]), "labels": [IGNORE_INDEX] + list(r["labels"][1:]),
             "position_ids": list(range(len(r["input_ids"])))} for r in rows]


def shard(rows: Sequence[dict], rank: int, world: int) -> list[dict]:
    """Equal shares (the remainder is dropped) so every rank runs the same number of steps."""
    per = len(rows) // world
    return list(rows[rank * per:(rank + 1) * per])


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    idx = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(idx)
    return idx


def collate(examples: Sequence[dict], pad_id: int, pad_to: int | None = None):
    """Right-pad to the longest row. Padding is its own pseudo-conversation (positions restart at
    0, labels -100), so the packed-sequence mask keeps it apart and no attention_mask is needed.
    ``pad_to`` fixes the width, so compiled kernels see one shape instead of one per batch."""
    import torch

    width = max(max(len(e["input_ids"]) for e in examples), pad_to or 0)
    ids, labels, pos = [], [], []
    for e in examples:
        n = len(e["input_ids"])
        pad = width - n
        ids.append(list(e["input_ids"]) + [pad_id] * pad)
        labels.append(list(e["labels"]) + [IGNORE_INDEX] * pad)
        pos.append(list(e["position_ids"]) + list(range(pad)))
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "position_ids": torch.tensor(pos)}


def real_tokens(examples: Sequence[dict]) -> int:
    return sum(len(e["input_ids"]) for e in examples)
