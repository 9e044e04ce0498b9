"""Micro-benchmark of decode attention on the GPU (TinyLlama-1.1B heads, bf16): our Triton kernel
(rotary and the cache write included) at several block/warp/stage settings against flash
attention's varlen path (attention alone), every row at the same context. Times are CUDA-graph replays (triton.testing.do_bench_cudagraph), in microseconds; a
cache that fits in L2 stays there between replays, so these are lower bounds for a real step.

  python3 benchmarks/decode_kernels.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workloads" / "serve"))

from decode_attention import decode_attention  # noqa: E402
from fused_layers import flash_varlen  # noqa: E402

HEADS, KV, DIM, HIDDEN, INTER, VOCAB = 32, 4, 64, 2048, 5632, 32000


def us(fn) -> float:
    return do_bench_cudagraph(fn, rep=50) * 1e3


def attention(batch: int, context: int, cache_len: int = 1152) -> None:
    dev = "cuda"
    cache = torch.randn(2, batch + 1, cache_len, KV, DIM, device=dev, dtype=torch.bfloat16)
    qkv = torch.randn(batch, HEADS + 2 * KV, DIM, device=dev, dtype=torch.bfloat16)
    q = qkv[:, :HEADS]
    cos, sin = (torch.randn(cache_len, DIM, device=dev, dtype=torch.bfloat16) for _ in range(2))
    pos = torch.full((batch,), context - 1, device=dev)
    cu_q = torch.arange(batch + 1, dtype=torch.int32, device=dev)
    used = (pos + 1).to(torch.int32)
    keys, values = cache[0].view(-1, KV, DIM), cache[1].view(-1, KV, DIM)
    kv_bytes = batch * context * KV * DIM * 2 * 2
    row = [f"attention b={batch:2d} ctx={context:4d} ({kv_bytes / 1e6:5.1f} MB)"]
    row.append(f"flash {us(lambda: flash_varlen(q, keys, values, cu_q, cu_q * cache_len, 1, cache_len, 0.125, False, used)):6.1f}")
    for block, warps, stages in ((64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 4, 3), (128, 8, 2), (32, 4, 3)):
        t = us(lambda: decode_attention(qkv, cache[0], cache[1], pos, cos, sin, HEADS, 0.125, block=block,
                                        num_warps=warps, num_stages=stages))
        row.append(f"triton {block}/{warps}/{stages} {t:6.1f}")
    print("  ".join(row), flush=True)


def main() -> int:
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}")
    for batch, context in ((1, 193), (32, 193), (32, 450), (64, 193), (32, 900)):
        attention(batch, context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
