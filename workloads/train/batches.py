"""The job's own loop's pieces that the Trainer path shares: micro-batches in a seeded order that a
restart replays, batches moved to the device (packed, on CUDA), and the loss/throughput meter whose
log lines the operator's metric regexes read."""
from __future__ import annotations

import os
import time

import torch

from . import data as D
from .environment import Rank

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A10G": 125.0, "L40S": 362.0, "L4": 121.0}


def log(msg: str) -> None:
    print(msg, flush=True)


def batch_kwargs(batch: dict, device: torch.device) -> dict:
    batch = {k: v.to(device) for k, v in batch.items()}
    if device.type == "cuda":
        try:
            from . import fastpath

            return fastpath.packed_batch_kwargs(batch["input_ids"], batch["position_ids"], batch["labels"])
        except ImportError:
            pass
    return batch


def micro_batches(rows: list[dict], hp, seed_epoch_start: int = 0):
    """Endless (epoch, micro-batch) stream; the same on every restart for a given seed."""
    epoch = seed_epoch_start
    while True:
        order = D.epoch_order(len(rows), hp.seed, epoch)
        for i in range(0, len(order) - hp.per_device_batch_size + 1, hp.per_device_batch_size):
            yield epoch, [rows[j] for j in order[i:i + hp.per_device_batch_size]]
        epoch += 1


def flops_per_token(config, mean_context: float) -> float:
    """Training FLOPs per token: 6 x parameters of the matmuls, plus causal attention."""
    h, layers = config.hidden_size, config.num_hidden_layers
    inter = config.intermediate_size
    kv = h * getattr(config, "num_key_value_heads", config.num_attention_heads) // config.num_attention_heads
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter
    params = layers * per_layer + h * config.vocab_size
    return 6 * params + 6 * layers * h * mean_context


def peak_flops(device: torch.device) -> float:
    env = os.environ.get("TRAIN_PEAK_TFLOPS")
    if env:
        return float(env) * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tf in PEAK_TFLOPS.items():
            if key in name:
                return tf * 1e12
        return 100e12
    return 1e12  # nominal for a CPU: the figure is only comparable run to run


class LossMeter:
    """Loss and real tokens since the last log line, reduced over all ranks at each logging step.
    Both methods log through it, so their lines match the operator's metric regexes."""

    def __init__(self, hp, rank: Rank, device: torch.device, *, total: int, micro_per_epoch: int,
                 flops_per_token: float, peak: float):
        self.hp, self.rank, self.device, self.total = hp, rank, device, total
        self.micro_per_epoch, self.fpt, self.peak = micro_per_epoch, flops_per_token, peak
        self.window_loss = torch.zeros(2, dtype=torch.float64)
        self.window_tokens = 0
        self.losses: list[float] = []
        self.total_tokens = 0
        self.restart_clock()

    def restart_clock(self) -> None:
        self.t_window = time.time()

    def add(self, loss, tokens: int) -> None:
        self.window_loss += torch.tensor([float(loss), 1.0], dtype=torch.float64)
        self.window_tokens += tokens

    def end_step(self, step: int, lr: float) -> None:
        """After optimizer step ``step`` (1-based) on every rank: a collective at logging steps."""
        import torch.distributed as dist

        if not (step % self.hp.logging_steps == 0 or step == self.total):
            return
        # on the collective's device: nccl reduces only CUDA tensors
        stats = torch.tensor([self.window_loss[0], self.window_loss[1], self.window_tokens], dtype=torch.float64,
                             device=self.device)
        dist.all_reduce(stats)
        stats = stats.cpu()
        now = time.time()
        mean_loss = float(stats[0] / stats[1])
        tps = float(stats[2]) / max(now - self.t_window, 1e-9)
        self.losses.append(mean_loss)
        self.total_tokens += int(stats[2])
        if self.rank.is_main:
            ep = (step * self.hp.gradient_accumulation_steps) / self.micro_per_epoch
            log(f"[train] step={step}/{self.total} epoch={ep:.2f} loss={mean_loss:.4f} lr={lr:.3e} "
                f"tokens_per_s={tps:.1f} mfu={tps * self.fpt / self.peak:.4f}")
        self.window_loss.zero_()
        self.window_tokens = 0
        self.t_window = now
