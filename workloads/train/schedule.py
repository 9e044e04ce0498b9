"""Learning-rate schedule (linear warmup, then cosine / linear decay or constant) and step
accounting, shared by both methods so they train identically."""
from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def lr_factor(step: int, total_steps: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(1.0, progress)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_scheduler {kind!r}")


def total_steps(micro_batches_per_epoch: int, accumulation: int, epochs: float, max_steps: int) -> int:
    if max_steps > 0:
        return max_steps
    per_epoch = max(1, micro_batches_per_epoch // accumulation)
    return max(1, math.ceil(per_epoch * epochs))


def make_scheduler(optimizer, total: int, warmup_ratio: float, kind: str):
    import torch

    warm = warmup_steps(total, warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warm, kind))
