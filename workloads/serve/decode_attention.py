"""One decode step's attention for all rows in one Triton kernel, which also writes the step's new
key and value into the cache.

Why our own kernel: at batch 32 on an H200, flash attention's varlen path spent 19 us a layer (a
split-KV kernel, a combine kernel, and copies to swap query heads into rows), plus 4 us for the
cache write; this kernel takes 5 us at a 193-token context and 7 us at 450
(benchmarks/decode_kernels.py). Here one program per (row, KV head)
takes that head's query group as the rows of one small matrix product per key block, reads keys
only up to the row's own position, and folds in the new key straight from registers (so nothing
reads what the same kernel wrote).

Cache layout: keys and values [slots, cache_len, kv_heads, head_dim] each (the engine's
`kv_cache[layer, 0]` and `[layer, 1]`). GPU only: importing this module needs Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 128  # with 4 warps and 3 stages: the fastest setting at batch 32, contexts 193-900 (H200)


@triton.jit
def _decode_kernel(q_ptr, kv_new_ptr, k_cache, v_cache, pos_ptr, out_ptr, scale,
                   s_qb, s_qh, s_nb, s_n2, s_nh, s_cs, s_cp, s_ch, s_ob, s_oh,
                   GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    head = tl.program_id(1)
    pos = tl.load(pos_ptr + row).to(tl.int32)   # this token's position; earlier keys are 0..pos-1
    d = tl.arange(0, D)
    g = tl.arange(0, GROUP_PAD)
    heads = head * GROUP + g
    q_mask = (g < GROUP)[:, None]
    q = tl.load(q_ptr + row * s_qb + heads[:, None] * s_qh + d[None, :], mask=q_mask, other=0.0)

    new = kv_new_ptr + row * s_nb + head * s_nh + d
    k_new = tl.load(new)
    v_new = tl.load(new + s_n2)
    base = row.to(tl.int64) * s_cs + head * s_ch
    tl.store(k_cache + base + pos * s_cp + d, k_new)
    tl.store(v_cache + base + pos * s_cp + d, v_new)

    m = tl.full((GROUP_PAD,), float("-inf"), tl.float32)
    l = tl.zeros((GROUP_PAD,), tl.float32)
    acc = tl.zeros((GROUP_PAD, D), tl.float32)
    for start in range(0, pos, BLOCK):
        n = start + tl.arange(0, BLOCK)
        n_mask = n < pos
        offs = base + n[:, None] * s_cp + d[None, :]
        k = tl.load(k_cache + offs, mask=n_mask[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_next = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_next)
        p = tl.exp(s - m_next[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        v = tl.load(v_cache + offs, mask=n_mask[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_next

    s_new = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], axis=1) * scale
    m_next = tl.maximum(m, s_new)
    alpha = tl.exp(m - m_next)
    p_new = tl.exp(s_new - m_next)
    l = l * alpha + p_new
    acc = acc * alpha[:, None] + p_new[:, None] * v_new.to(tl.float32)[None, :]
    out = acc / l[:, None]
    tl.store(out_ptr + row * s_ob + heads[:, None] * s_oh + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=q_mask)


def decode_attention(q: torch.Tensor, kv_new: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     pos: torch.Tensor, scale: float, *, block: int = BLOCK_N, num_warps: int = 4,
                     num_stages: int = 3) -> torch.Tensor:
    """q [B, H, D] (any strides, last dim contiguous), kv_new [B, 2, KV, D] (this step's rotated
    keys and values), k_cache/v_cache [slots >= B, cache_len, KV, D], pos [B] (each row's position).
    Writes kv_new at pos into row b of the caches and returns attention over keys 0..pos, [B, H, D]."""
    b, n_heads, dim = q.shape
    n_kv = kv_new.shape[2]
    group = n_heads // n_kv
    out = torch.empty((b, n_heads, dim), dtype=q.dtype, device=q.device)
    assert q.stride(-1) == 1 and kv_new.stride(-1) == 1 and k_cache.stride(-1) == 1
    assert k_cache.stride() == v_cache.stride()
    _decode_kernel[(b, n_kv)](
        q, kv_new, k_cache, v_cache, pos, out, scale,
        q.stride(0), q.stride(1), kv_new.stride(0), kv_new.stride(1), kv_new.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), out.stride(0), out.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), D=dim, BLOCK=block,
        num_warps=num_warps, num_stages=num_stages)
    return out
