"""The engine's tensor math: a decoder layer's weights fused for few kernels a step, the per-layer
functions (which torch.compile may fuse further), attention selection and token selection.

Attention paths: `sdpa` is masked scaled_dot_product_attention over a bucketed prefix of the cache
(any device); `flash` is flash attention's varlen form, prefill and decode, each row reading its
own length; `triton` is flash prefill and decode by our kernel, which also applies rotary and
writes the cache (decode_attention.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ATTENTION = ("triton", "flash", "sdpa")


def _add_delta(base, u, b, sel):
    """base + (u with every row's other adapters zeroed) @ b. The add is a separate elementwise
    op, which a compiled step fuses into whatever reads the result (rotary, SiLU, the norm)."""
    u = u.view(u.shape[0], sel.shape[1], -1) * sel[:, :, None]
    return base + u.view(u.shape[0], -1) @ b


def lora_delta(base, h, lora, sel):
    """base + every row's own adapter delta: lora = (a [L*G*R, in], b [L*G*R, out]) stacked as in
    lora_adapters.LoraBank, sel [N, L] 1 where row n uses adapter l (a row of zeros: the base model).
    All adapters' A run for every row and the selection zeroes the others, so shapes are static
    (CUDA graphs) and each step reads every adapter's weights once."""
    if lora is None:
        return base
    a, b = lora
    return _add_delta(base, F.linear(h, a), b, sel)


def project(h, w, bias, lora, sel):
    """h @ w.T (+ bias) with each row's adapter delta. lora: None, (a, b) as in lora_delta, or
    (None, b) when the A rows are w's last rows (FusedLayer.fold): then one product gives the
    base output and every adapter's A output, one kernel fewer per step and layer."""
    if lora is None or lora[0] is not None:
        return lora_delta(F.linear(h, w, bias), h, lora, sel)
    base, u = _folded(h, w, lora[1])
    return _add_delta(base, u, lora[1], sel)


def _folded(h, w, b):
    """(h @ base rows of w.T, h @ the folded A rows of w.T): w's last b.shape[0] rows are A's."""
    y = F.linear(h, w)
    n = w.shape[0] - b.shape[0]
    return y[:, :n], y[:, n:]


def qkv_math(x, ln_w, eps: float, w_qkv, b_qkv, cos, sin, n_heads: int, n_kv: int, lora=None, sel=None):
    h = F.rms_norm(x, (x.shape[-1],), ln_w, eps)
    qkv = project(h, w_qkv, b_qkv, lora, sel)
    head_dim = cos.shape[-1]
    qkv = qkv.view(x.shape[0], n_heads + 2 * n_kv, head_dim)
    qk = qkv[:, :n_heads + n_kv]
    qk = torch.addcmul(qk * cos[:, None], qk.roll(head_dim // 2, dims=-1), sin[:, None])
    kv = torch.cat((qk[:, n_heads:], qkv[:, n_heads + n_kv:]), dim=1)
    return qk[:, :n_heads], kv.view(x.shape[0], 2, n_kv, head_dim)


def qkv_raw_math(x, ln_w, eps: float, w_qkv, b_qkv, n_heads: int, n_kv: int, lora=None, sel=None):
    """Norm and fused q/k/v projection, [N, H + 2 KV, D], for a kernel that does rotary itself."""
    h = F.rms_norm(x, (x.shape[-1],), ln_w, eps)
    qkv = project(h, w_qkv, b_qkv, lora, sel)
    return qkv.view(x.shape[0], n_heads + 2 * n_kv, -1)


def rest_math(x, attn_out, w_o, b_o, ln_w, eps: float, w_gu, w_down, act, lora_o=None, lora_gu=None,
              lora_down=None, sel=None):
    """Output projection and MLP, residuals folded into the matmuls (addmm); the adapters' deltas
    (lora_delta) where given."""
    x = _residual(x, attn_out, w_o, b_o, lora_o, sel)
    h = F.rms_norm(x, (x.shape[-1],), ln_w, eps)
    gu = project(h, w_gu, None, lora_gu, sel)
    inter = gu.shape[-1] // 2
    m = act(gu[:, :inter]) * gu[:, inter:]
    return _residual(x, m, w_down, None, lora_down, sel)


def _residual(x, h, w, bias, lora, sel):
    """x + h @ w.T (+ bias) with the adapters' delta: the residual folded into the product (addmm)
    where there is no adapter, else one product of the matrix with its folded A rows (project)."""
    if lora is None:
        return torch.addmm(x, h, w.t()) if bias is None else x + F.linear(h, w, bias)
    if lora[0] is not None:
        return lora_delta(_residual(x, h, w, bias, None, sel), h, lora, sel)
    base, u = _folded(h, w, lora[1])
    return _add_delta(x + base, u, lora[1], sel)


def layer_functions(compile_step: bool):
    """(qkv, qkv_raw, rest) for the engine's steps. Compiled, inductor fuses the small kernels
    around the matmuls (norms, rotary, SiLU) and the graphs then replay the fused kernels; sizes
    stay symbolic, so one compile serves all buckets. Compiling the whole 22-layer step took too
    long; these pure functions compile once each."""
    if not compile_step:
        return qkv_math, qkv_raw_math, rest_math
    return (torch.compile(qkv_math, dynamic=True), torch.compile(qkv_raw_math, dynamic=True),
            torch.compile(rest_math, dynamic=True))


def default_attention(device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    if not flash_attention_usable(device, dtype):
        return "sdpa"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "flash"
    return "triton" if head_dim & (head_dim - 1) == 0 else "flash"


def flash_attention_usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Flash attention (varlen, with per-row key lengths) runs on CUDA GPUs of compute capability
    8.0 or newer, in bf16 or fp16."""
    return (device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and torch.backends.cuda.is_flash_attention_available()
            and torch.cuda.get_device_capability(device) >= (8, 0))


def flash_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale: float, causal: bool, seqused_k=None):
    """Attention over packed sequences: q [Nq, H, D], k/v [Nk, KV, D]; sequence i is queries
    cu_q[i]:cu_q[i+1] and keys from cu_k[i], seqused_k[i] of them when given (else up to cu_k[i+1]).
    Grouped-query heads are native (no repeat of k/v); no mask is materialised."""
    return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False,
                                                   scale=scale, seqused_k=seqused_k)[0]


class FusedLayer:
    """A decoder layer's weights arranged for few kernels per step: q/k/v in one matrix and
    gate/up in another. The module's own parameters become views into these, so the model is
    unchanged (generate() still works) and no weight is stored twice."""

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.w_qkv = _fuse(attn.q_proj, attn.k_proj, attn.v_proj)
        self.b_qkv = _fuse_bias(attn.q_proj, attn.k_proj, attn.v_proj)
        self.w_gu = _fuse(mlp.gate_proj, mlp.up_proj)
        if getattr(mlp.gate_proj, "bias", None) is not None:
            raise ValueError("MLP biases are not supported (Llama has none)")
        self.w_o, self.b_o = attn.o_proj.weight, attn.o_proj.bias
        self.w_down = mlp.down_proj.weight
        # One function object for every layer, so a compiled step is not specialised per layer.
        self.act = F.silu if type(mlp.act_fn).__name__ in ("SiLU", "SiLUActivation") else mlp.act_fn
        self.ln1, self.eps1 = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.ln2, self.eps2 = layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon
        # Stacked adapter weights per group ("qkv", "o", "gu", "down"), set by the runner's LoraBank;
        # (None, b) for a group whose A rows were folded into its matrix (fold).
        self.lora: dict = {}
        # group -> (the base matrix's attribute, the modules whose weights are views of it)
        self._members = {"qkv": ("w_qkv", (attn.q_proj, attn.k_proj, attn.v_proj)), "o": ("w_o", (attn.o_proj,)),
                         "gu": ("w_gu", (mlp.gate_proj, mlp.up_proj)), "down": ("w_down", (mlp.down_proj,))}
        # What the steps multiply by, per group: the base matrices, grown by fold.
        self.matrix = {g: getattr(self, attr) for g, (attr, _) in self._members.items()}

    def fold(self, group: str, rows: int) -> torch.Tensor | None:
        """Grow the group's base matrix by `rows` zero rows, the place of its stacked LoRA A
        (lora_adapters.LoraBank): one product then gives the base output and every adapter's A
        output, one kernel fewer per group, layer and step. Returns those rows, a view the bank
        fills in place (adapters loaded later land in the matrix the captured graphs read); None
        where a bias is kept apart. The base matrix and the modules' own weights become views of
        the grown one, so no weight is stored twice."""
        bias = {"qkv": self.b_qkv, "o": self.b_o}.get(group)
        if group not in self._members or bias is not None:
            return None
        attr, modules = self._members[group]
        w = getattr(self, attr)
        grown = torch.cat([w, w.new_zeros(rows, w.shape[1])])
        start = 0
        for m in modules:
            n = m.weight.shape[0]
            m.weight.data = grown[start:start + n]
            start += n
        setattr(self, attr, grown[:w.shape[0]])
        self.matrix[group] = grown
        return grown[w.shape[0]:]


def _fuse(*linears):
    fused = torch.cat([m.weight.data for m in linears], dim=0)
    start = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight.data = fused[start:start + n]
        start += n
    return fused


def _fuse_bias(*linears):
    if all(getattr(m, "bias", None) is None for m in linears):
        return None
    return _fuse_bias_tensors([m.bias for m in linears])


def _fuse_bias_tensors(biases):
    fused = torch.cat([b.data for b in biases])
    start = 0
    for b in biases:
        n = b.shape[0]
        b.data = fused[start:start + n]
        start += n
    return fused


def select_tokens(logits, temperature, top_p, sample, with_sampling: bool):
    """Greedy argmax, and for rows that sample: temperature, nucleus (top_p) cut, then a draw
    by the exponential-race trick (argmax of p / Exp(1)), which needs no host sync."""
    greedy = logits.argmax(-1)
    if not with_sampling:
        return greedy
    probs = torch.softmax(logits / temperature[:, None].clamp_min(1e-5), dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    cut = (sorted_p.cumsum(-1) - sorted_p) > top_p[:, None]
    sorted_p = sorted_p.masked_fill(cut, 0.0)
    draw = (sorted_p / torch.empty_like(sorted_p).exponential_()).argmax(-1)
    drawn = order.gather(-1, draw[:, None])[:, 0]
    return torch.where(sample, drawn, greedy)
