"""One decode step's attention for all rows in one Triton kernel, which also applies rotary
embeddings to the step's queries and key and writes the new key and value into the cache.

Why our own kernel: at batch 32 on an H200, flash attention's varlen path spent 19 us a layer (a
split-KV kernel, a combine kernel, and copies to swap query heads into rows), plus 4 us for the
cache write; this kernel takes 5 us at a 193-token context and 7 us at 450
(benchmarks/decode_kernels.py). Here one program per (row, KV head)
takes that head's query group as the rows of one small matrix product per key block, reads keys
only up to the row's own position, and folds in the new key straight from registers (so nothing
reads what the same kernel wrote). Rotary is done here too, as a separate elementwise kernel
(plus the concatenation of k and v) cost 6 us a layer at batch 32.

Cache layout: keys and values [slots, cache_len, kv_heads, head_dim] each (the engine's
`kv_cache[layer, 0]` and `[layer, 1]`). GPU only: importing this module needs Triton."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 128  # with 4 warps and 3 stages: the fastest setting at batch 32, contexts 193-900 (H200)


@triton.jit
def _rotated(ptr, d, d_rot, cos, sin):
    """Rotary embedding of one head vector at ptr: x * cos + roll(x, D/2) * sin (sin's first half
    negated by the caller), rounded to the cache's dtype as the unfused path rounds it."""
    x = tl.load(ptr + d).to(tl.float32)
    x_rot = tl.load(ptr + d_rot).to(tl.float32)
    return (x * cos + x_rot * sin).to(ptr.dtype.element_ty)


@triton.jit
def _decode_kernel(qkv_ptr, k_cache, v_cache, pos_ptr, cos_ptr, sin_ptr, out_ptr, scale,
                   s_b, s_h, s_cs, s_cp, s_ch, s_ob, s_oh,
                   N_HEADS: tl.constexpr, N_KV: tl.constexpr, GROUP_PAD: tl.constexpr, D: tl.constexpr,
                   BLOCK: tl.constexpr):
    GROUP: tl.constexpr = N_HEADS // N_KV
    row = tl.program_id(0)
    head = tl.program_id(1)
    pos = tl.load(pos_ptr + row).to(tl.int32)   # this token's position; earlier keys are 0..pos-1
    d = tl.arange(0, D)
    d_rot = (d + D // 2) % D
    cos = tl.load(cos_ptr + pos * D + d).to(tl.float32)
    sin = tl.load(sin_ptr + pos * D + d).to(tl.float32)

    # This row's query heads of this group, rotated: [GROUP_PAD, D] (rows past GROUP are zero).
    g = tl.arange(0, GROUP_PAD)
    heads = head * GROUP + g
    q_mask = (g < GROUP)[:, None]
    q_ptrs = qkv_ptr + row * s_b + heads[:, None] * s_h
    q = tl.load(q_ptrs + d[None, :], mask=q_mask, other=0.0).to(tl.float32)
    q_rot = tl.load(q_ptrs + d_rot[None, :], mask=q_mask, other=0.0).to(tl.float32)
    q = (q * cos[None, :] + q_rot * sin[None, :]).to(qkv_ptr.dtype.element_ty)

    k_new = _rotated(qkv_ptr + row * s_b + (N_HEADS + head) * s_h, d, d_rot, cos, sin)
    v_new = tl.load(qkv_ptr + row * s_b + (N_HEADS + N_KV + head) * s_h + d)
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

    # The new key, folded in from registers (nothing reads what this kernel wrote).
    s_new = tl.sum(q.to(tl.float32) * k_new.to(tl.float32)[None, :], axis=1) * scale
    m_next = tl.maximum(m, s_new)
    alpha = tl.exp(m - m_next)
    p_new = tl.exp(s_new - m_next)
    l = l * alpha + p_new
    acc = acc * alpha[:, None] + p_new[:, None] * v_new.to(tl.float32)[None, :]
    out = acc / l[:, None]
    tl.store(out_ptr + row * s_ob + heads[:, None] * s_oh + d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=q_mask)


def decode_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor,
                     cos: torch.Tensor, sin: torch.Tensor, n_heads: int, scale: float, *, block: int = BLOCK_N,
                     num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """qkv [B, H + 2 KV, D]: this step's projections before rotary (queries, keys, values);
    k_cache/v_cache [slots >= B, cache_len, KV, D]; pos [B], each row's position; cos/sin
    [cache_len, D] rotary tables (sin with its first half negated: rotate_half(x) * sin ==
    roll(x, D/2) * sin'). Rotates q and k, writes k and v at pos into row b of the caches, and
    returns attention over keys 0..pos, [B, H, D]."""
    b, width, dim = qkv.shape
    n_kv = (width - n_heads) // 2
    group = n_heads // n_kv
    out = torch.empty((b, n_heads, dim), dtype=qkv.dtype, device=qkv.device)
    assert qkv.stride(-1) == 1 and k_cache.stride(-1) == 1 and k_cache.stride() == v_cache.stride()
    assert cos.is_contiguous() and sin.is_contiguous() and cos.shape[-1] == dim
    _decode_kernel[(b, n_kv)](
        qkv, k_cache, v_cache, pos, cos, sin, out, scale,
        qkv.stride(0), qkv.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        out.stride(0), out.stride(1),
        N_HEADS=n_heads, N_KV=n_kv, GROUP_PAD=max(16, triton.next_power_of_2(group)), D=dim, BLOCK=block,
        num_warps=num_warps, num_stages=num_stages)
    return out
