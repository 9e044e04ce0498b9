"""Server-side batching for a Llama-family causal LM: plain Python, torch and transformers.

Concurrent requests are queued; a worker thread admits them into a fixed set of slots (rows of a
preallocated KV cache) and runs one decode step for all active slots at a time, so a request that
arrives while others are generating joins at the next step (rolling batch). Each slot keeps its
own positions, so a prompt's result does not depend on what it was batched with: greedy output in
a batch equals the same prompt alone.

Why not `generate()`: with a static cache it spent 5 ms a step at batch 32 on an H100, mostly in
Python, and `torch.compile(mode="reduce-overhead")` over it broke. So the engine owns the loop:
a prefill writes the prompts' keys and values into their slots, then every decode step is one
CUDA-graph replay (captured per batch-size bucket and sampling), with the next token and
positions fed back on the device. On the CPU the same step runs eagerly.
The weights are the model's own modules (norms, projections, MLP); only attention and the cache
are ours. On the GPU, prefill attention is flash attention's varlen form (no mask) and decode
attention is our Triton kernel (decode_attention.py, rotary and the cache write included), each
row reading only its own length; elsewhere, masked SDPA over a bucketed prefix of the cache."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from request_params import GenerationParams, RequestError

log = logging.getLogger("batching_engine")

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
LENGTH_BUCKET = 128   # attention reads the cache up to the next multiple of this
PREFILL_BUDGET = 8192  # most prompt tokens in one prefill (its mask is tokens x tokens)
PREFILL_BUCKET = 256   # captured prefills come in multiples of this many tokens
SLACK = 2             # slots past max_len: a finished row may run one more step before it is seen


@dataclass
class GenerationResult:
    text: str | None
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str          # "eos", "length" or "stop"
    latency_s: float


@dataclass
class _Request:
    prompt_ids: list[int]
    params: GenerationParams
    future: Future
    prompt_text: str | None = None
    submitted: float = field(default_factory=time.perf_counter)
    generated: list[int] = field(default_factory=list)
    slot: int = -1
    pos: int = 0                # host mirror of the slot's next cache position


def _qkv_math(x, ln_w, eps: float, w_qkv, b_qkv, cos, sin, n_heads: int, n_kv: int):
    qkv = F.linear(F.rms_norm(x, (x.shape[-1],), ln_w, eps), w_qkv, b_qkv)
    head_dim = cos.shape[-1]
    qkv = qkv.view(x.shape[0], n_heads + 2 * n_kv, head_dim)
    qk = qkv[:, :n_heads + n_kv]
    qk = torch.addcmul(qk * cos[:, None], qk.roll(head_dim // 2, dims=-1), sin[:, None])
    kv = torch.cat((qk[:, n_heads:], qkv[:, n_heads + n_kv:]), dim=1)
    return qk[:, :n_heads], kv.view(x.shape[0], 2, n_kv, head_dim)


def _qkv_raw_math(x, ln_w, eps: float, w_qkv, b_qkv, n_heads: int, n_kv: int):
    """Norm and fused q/k/v projection, [N, H + 2 KV, D], for a kernel that does rotary itself."""
    qkv = F.linear(F.rms_norm(x, (x.shape[-1],), ln_w, eps), w_qkv, b_qkv)
    return qkv.view(x.shape[0], n_heads + 2 * n_kv, -1)


def _rest_math(x, attn_out, w_o, b_o, ln_w, eps: float, w_gu, w_down, act):
    """Output projection and MLP, residuals folded into the matmuls (addmm)."""
    x = torch.addmm(x, attn_out, w_o.t()) if b_o is None else x + F.linear(attn_out, w_o, b_o)
    gu = F.linear(F.rms_norm(x, (x.shape[-1],), ln_w, eps), w_gu)
    inter = gu.shape[-1] // 2
    return torch.addmm(x, act(gu[:, :inter]) * gu[:, inter:], w_down.t())


# sdpa: masked scaled_dot_product_attention over a bucketed prefix of the cache (any device).
# flash: flash attention's varlen form, prefill and decode, each row reading its own length.
# triton: flash prefill; decode by our kernel, which also applies rotary and writes the cache
# (decode_attention.py).
ATTENTION = ("triton", "flash", "sdpa")


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


def _flash_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale: float, causal: bool, seqused_k=None):
    """Attention over packed sequences: q [Nq, H, D], k/v [Nk, KV, D]; sequence i is queries
    cu_q[i]:cu_q[i+1] and keys from cu_k[i], seqused_k[i] of them when given (else up to cu_k[i+1]).
    Grouped-query heads are native (no repeat of k/v); no mask is materialised."""
    return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False,
                                                   scale=scale, seqused_k=seqused_k)[0]


def prefill_groups(reqs: list[_Request]) -> list[list[_Request]]:
    """The requests in order, packed into prefills of at most PREFILL_BUDGET prompt tokens (a
    prefill's buffers, and the masked path's tokens x tokens mask, are sized by it)."""
    groups: list[list[_Request]] = []
    used = 0
    for r in reqs:
        if not groups or used + len(r.prompt_ids) > PREFILL_BUDGET:
            groups.append([])
            used = 0
        groups[-1].append(r)
        used += len(r.prompt_ids)
    return groups


@dataclass
class _Call:
    """Work to run on the engine's thread (which owns the GPU state) when it is idle."""
    fn: object


class _FusedLayer:
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


class BatchingEngine:
    """`submit()` from any thread; results come back on `concurrent.futures.Future`s."""

    def __init__(self, model, tokenizer=None, *, max_batch_size: int = 32, max_wait_ms: float = 10.0,
                 max_len: int | None = None, use_cuda_graphs: bool | None = None,
                 default_max_new_tokens: int = 64, compile_step: bool = False, graph_prefill: bool = True,
                 attention: str | None = None):
        cfg = model.config
        if getattr(cfg, "model_type", "llama") not in ("llama", "mistral"):
            raise ValueError(f"model_type {cfg.model_type!r} is not a Llama-family model")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_len = int(max_len or min(getattr(cfg, "max_position_embeddings", 2048), 4096))
        self.default_max_new_tokens = default_max_new_tokens
        self.use_graphs = (self.device.type == "cuda") if use_cuda_graphs is None else use_cuda_graphs
        self.graph_prefill = self.use_graphs and graph_prefill
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.attention = attention or default_attention(self.device, self.dtype, head_dim)
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        if self.attention != "sdpa" and not flash_attention_usable(self.device, self.dtype):
            raise ValueError(f"attention {self.attention!r} needs a CUDA device of compute capability 8.0+ and "
                             f"bf16/fp16 weights; this model is {self.dtype} on {self.device}")
        if self.attention == "triton":
            from decode_attention import decode_attention
            self._decode_attention = decode_attention
        # Optionally let inductor fuse the step's small elementwise kernels (norms, rotary, SiLU);
        # the graphs then replay the fused kernels. Sizes stay symbolic: one compile for all buckets.
        self._step = self._decode_step
        self._qkv_fn, self._qkv_raw_fn, self._rest_fn = _qkv_math, _qkv_raw_math, _rest_math
        if compile_step:
            # Inductor fuses the small kernels around the matmuls (norms, rotary, SiLU); compiling
            # the whole 22-layer step took too long, these two pure functions compile once each.
            self._qkv_fn = torch.compile(_qkv_math, dynamic=True)
            self._qkv_raw_fn = torch.compile(_qkv_raw_math, dynamic=True)
            self._rest_fn = torch.compile(_rest_math, dynamic=True)

        inner = model.model
        self._embed, self._norm, self._head = inner.embed_tokens, inner.norm, model.lm_head
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.scale = self.head_dim ** -0.5
        self._layers = [_FusedLayer(layer) for layer in inner.layers]

        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else cfg.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(ids)

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.n_slots = max_batch_size
        dev, n_layers = self.device, len(self._layers)
        # Whole buckets, so every attention length a step may use is a prefix of the cache.
        self.cache_len = -(-(self.max_len + SLACK) // LENGTH_BUCKET) * LENGTH_BUCKET
        # [layer, 2 (k, v), slot, position, kv head, dim]: a layer's keys are one packed
        # [slots * cache_len, kv, dim] tensor, slot s starting at s * cache_len, which is the varlen
        # layout flash attention reads (each row only up to its own length), and one index_put per
        # layer writes a step's k and v. One row past the slots: a scratch row where a captured
        # prefill's padding tokens write.
        self.kv_cache = torch.zeros((n_layers, 2, self.n_slots + 1, self.cache_len, self.n_kv, self.head_dim),
                                    dtype=self.dtype, device=dev)
        positions = torch.arange(self.cache_len, device=dev)
        cos, sin = inner.rotary_emb(self.kv_cache[0, 0, 0, :, 0], positions[None])
        half = self.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * [-sin_first_half, sin_second_half]
        sin = torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)
        self.cos, self.sin = cos[0].to(self.dtype), sin.to(self.dtype)
        self.slot_index = positions
        self._neg_inf = torch.tensor(float("-inf"), dtype=self.dtype, device=dev)
        # Sequence offsets for flash attention's varlen form: decode row i is query i and keys
        # [i * cache_len, i * cache_len + pos_i]; a prefill fills its own (fixed-size) offsets.
        idx = torch.arange(self.n_slots + 2, dtype=torch.int32, device=dev)
        self._cu_q, self._cu_k = idx, idx * self.cache_len

        # Decode-step state, read and advanced on the device by each (captured) step.
        self.tokens = torch.zeros(self.n_slots, dtype=torch.long, device=dev)
        self.pos = torch.zeros(self.n_slots, dtype=torch.long, device=dev)
        self.active = torch.zeros(self.n_slots, dtype=torch.long, device=dev)
        self.temperature = torch.ones(self.n_slots, dtype=torch.float32, device=dev)
        self.top_p = torch.ones(self.n_slots, dtype=torch.float32, device=dev)
        self.sample = torch.zeros(self.n_slots, dtype=torch.bool, device=dev)
        self.next_tokens = torch.zeros(self.n_slots, dtype=torch.long, device=dev)
        pin = dev.type == "cuda"
        self._host_tokens = [torch.zeros(self.n_slots, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self._graphs: dict[tuple[int, int, bool], torch.cuda.CUDAGraph] = {}
        self._pool = None
        # Prefill inputs (token, prompt index, position, slot) packed into PREFILL_BUDGET tokens;
        # on the GPU the prefill is a graph too, per token-count bucket, as its eager launch
        # overhead (hundreds of small kernels) cost more than the work.
        self._p_in = torch.zeros((4, PREFILL_BUDGET), dtype=torch.long, device=dev)
        self._p_last = torch.zeros(self.n_slots, dtype=torch.long, device=dev)
        self._p_cu = torch.zeros(self.n_slots + 2, dtype=torch.int32, device=dev)
        self._p_logits = torch.zeros((self.n_slots, model.config.vocab_size), dtype=torch.float32, device=dev)
        self._prefill_graphs: dict[int, torch.cuda.CUDAGraph] = {}

        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._slots: list[_Request | None] = [None] * self.n_slots
        self._stopping = False
        self._calls: list[_Call] = []
        # admit_s: host time spent admitting requests (prefill included), which decode steps wait on.
        self.stats = {"steps": 0, "prefills": 0, "graphs": 0, "admit_s": 0.0}
        self._thread = threading.Thread(target=self._run, name="batching-engine", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- client side
    def submit(self, prompt: str | None = None, params: GenerationParams | None = None, *,
               input_ids: list[int] | None = None) -> Future:
        """Queue one request. Raises `RequestError` at once for a request that cannot run, so
        it never joins (or breaks) a batch."""
        params = params or GenerationParams(max_new_tokens=self.default_max_new_tokens)
        if input_ids is None:
            if self.tokenizer is None:
                raise RequestError("inputs", "this engine has no tokenizer; send input_ids")
            if not isinstance(prompt, str) or not prompt:
                raise RequestError("inputs", "must be a non-empty string")
            input_ids = self.tokenizer(prompt)["input_ids"]
        if not input_ids:
            raise RequestError("inputs", "the prompt encodes to no tokens")
        vocab = self._embed.num_embeddings
        if any(not 0 <= t < vocab for t in input_ids):
            raise RequestError("inputs", f"token ids must be in [0, {vocab})")
        if len(input_ids) > PREFILL_BUDGET:
            raise RequestError("inputs", f"the prompt is {len(input_ids)} tokens; at most {PREFILL_BUDGET} are accepted")
        if len(input_ids) + params.max_new_tokens > self.max_len:
            room = self.max_len - len(input_ids)
            field_name = "inputs" if room < 1 else "parameters.max_new_tokens"
            raise RequestError(field_name, f"prompt ({len(input_ids)} tokens) + max_new_tokens "
                               f"({params.max_new_tokens}) exceeds the model's {self.max_len}-token limit"
                               + (f"; ask for at most {room} new tokens" if room >= 1 else "; shorten the prompt"))
        if self._stopping:
            raise RequestError("engine", "the engine is shutting down", status=503)
        future: Future = Future()
        self._queue.put(_Request(list(input_ids), params, future, prompt_text=prompt))
        return future

    def generate(self, prompt: str, params: GenerationParams | None = None, timeout: float | None = None):
        return self.submit(prompt, params).result(timeout)

    def warmup(self, batch_sizes=None, prefill: bool = True) -> int:
        """Capture the decode graphs for these batch sizes at every attention length now, so no
        request waits for a capture later. Call before serving; returns the graphs captured."""
        if not self.use_graphs:
            return 0
        buckets = sorted({self._bucket(n) for n in (batch_sizes or [self.n_slots])})
        before = self.stats["graphs"]
        done = threading.Event()

        def capture():
            with torch.no_grad():
                for b in buckets:
                    for length in self._attention_lengths():
                        if (b, length, False) not in self._graphs:
                            self._capture((b, length, False))
                if prefill and self.graph_prefill:
                    self._p_in.zero_()
                    self._p_in[3].fill_(self.n_slots)  # the scratch row: no slot is touched
                    for n_tok in range(PREFILL_BUCKET, PREFILL_BUDGET + 1, PREFILL_BUCKET):
                        if n_tok not in self._prefill_graphs:
                            self._capture_prefill(n_tok)
            torch.cuda.synchronize()
            done.set()

        self._queue.put(_Call(capture))  # on the worker thread, between steps
        done.wait()
        return self.stats["graphs"] - before

    def _attention_lengths(self) -> range:
        """The key lengths a decode step is specialised for: flash attention reads each row's own
        length, so one covers all; the masked SDPA path reads a bucketed prefix of the cache."""
        if self.attention != "sdpa":
            return range(self.cache_len, self.cache_len + 1)
        return range(LENGTH_BUCKET, self.cache_len + 1, LENGTH_BUCKET)

    def _bucket(self, n: int) -> int:
        return next((x for x in BATCH_BUCKETS if x >= n and x <= self.n_slots), self.n_slots)

    def close(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._queue.put(None)
        self._thread.join(timeout)

    # ---------------------------------------------------------------- the model, our way
    def _layer_qkv(self, layer, x, cos, sin):
        """Norm, fused q/k/v projection and rotary embedding for x [N, hidden], cos/sin [N, D].
        Returns q [N, H, D] and the new keys and values [N, 2, KV, D]."""
        return self._qkv_fn(x, layer.ln1, layer.eps1, layer.w_qkv, layer.b_qkv, cos, sin, self.n_heads, self.n_kv)

    def _layer_rest(self, layer, x, attn_out):
        return self._rest_fn(x, attn_out, layer.w_o, layer.b_o, layer.ln2, layer.eps2, layer.w_gu, layer.w_down,
                             layer.act)

    def _prefill(self, reqs: list[_Request]) -> torch.Tensor:
        """Run the prompts packed into one sequence (attention kept within each prompt), store
        their keys/values in their slots, and return each prompt's last-token logits [n, vocab]."""
        lengths = [len(r.prompt_ids) for r in reqs]
        total = sum(lengths)
        n_tok = -(-total // PREFILL_BUCKET) * PREFILL_BUCKET if self.graph_prefill else total
        pad = n_tok - total
        packed = torch.tensor([
            [t for r in reqs for t in r.prompt_ids] + [0] * pad,
            [i for i, n in enumerate(lengths) for _ in range(n)] + [-1] * pad,  # padding: its own "prompt"
            [p for n in lengths for p in range(n)] + [0] * pad,
            [r.slot for r in reqs for _ in r.prompt_ids] + [self.n_slots] * pad,
        ])
        last = [sum(lengths[:i + 1]) - 1 for i in range(len(reqs))]
        # Prompt i is tokens cu[i]:cu[i+1]; the padding is one more sequence; the rest are empty.
        cu = [0] + [n + 1 for n in last] + [n_tok] * (self.n_slots + 1 - len(reqs))
        self._p_cu.copy_(torch.tensor(cu, dtype=torch.int32))
        self._p_in[:, :n_tok].copy_(packed)
        self._p_last.copy_(torch.tensor(last + [0] * (self.n_slots - len(reqs))))
        if not self.graph_prefill:
            self._prefill_packed(n_tok)
        else:
            graph = self._prefill_graphs.get(n_tok) or self._capture_prefill(n_tok)
            graph.replay()
        return self._p_logits[:len(reqs)]

    def _prefill_packed(self, n_tok: int) -> None:
        ids, seq, pos, slot = self._p_in[:, :n_tok]
        flash = self.attention != "sdpa"
        if not flash:
            allowed = (seq[:, None] == seq[None, :]) & (pos[:, None] >= pos[None, :])
            mask = torch.where(allowed, 0.0, self._neg_inf).to(self.dtype)
        cos, sin = self.cos[pos], self.sin[pos]
        where = slot * self.cache_len + pos
        # No sequence is longer than max_len (a prompt) or a bucket (the padding). Flash attention
        # launches max_q / 128 query blocks for every sequence, most of which exit at once, so
        # the whole packed length here would cost hundreds of empty blocks a layer.
        max_q = min(n_tok, max(self.max_len, PREFILL_BUCKET))
        group = self.n_heads // self.n_kv
        x = self._embed(ids)
        for li, layer in enumerate(self._layers):
            q, kv = self._layer_qkv(layer, x, cos, sin)
            self._write_kv(li, where, kv)
            if flash:
                o = _flash_varlen(q, kv[:, 0].contiguous(), kv[:, 1].contiguous(), self._p_cu, self._p_cu, max_q,
                                  max_q, self.scale, causal=True)
                x = self._layer_rest(layer, x, o.reshape(n_tok, -1))
                continue
            k = kv[:, 0].transpose(0, 1).repeat_interleave(group, dim=0)
            v = kv[:, 1].transpose(0, 1).repeat_interleave(group, dim=0)
            o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None], attn_mask=mask[None, None],
                                               scale=self.scale)
            x = self._layer_rest(layer, x, o[0].transpose(0, 1).reshape(n_tok, -1))
        self._p_logits.copy_(self._head(self._norm(x[self._p_last])).float())

    def _write_kv(self, layer: int, where, kv) -> None:
        """Store kv [N, 2, KV, D] at flat cache positions `where` (slot * cache_len + position)."""
        self.kv_cache[layer].view(2, -1, self.n_kv, self.head_dim)[:, where] = kv.transpose(0, 1)

    def _capture_prefill(self, n_tok: int) -> "torch.cuda.CUDAGraph":
        # Warm-up runs write the same keys/values the replay will (same inputs), so they are harmless.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._prefill_packed(n_tok)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._prefill_packed(n_tok)
        self._prefill_graphs[n_tok] = graph
        self.stats["graphs"] += 1
        return graph

    def _select(self, logits, temperature, top_p, sample, with_sampling: bool):
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

    def _decode_step(self, b: int, length: int, with_sampling: bool) -> None:
        """One token for slots [0, b): reads self.tokens/pos, writes next_tokens, advances state.
        Fixed shapes and no host syncs, so it can be captured as a CUDA graph."""
        tok, pos = self.tokens[:b], self.pos[:b]
        kind = self.attention
        if kind != "triton":  # the Triton kernel reads the tables at pos itself
            cos, sin = self.cos[pos], self.sin[pos]
        where = None if kind == "triton" else self.slot_index[:b] * self.cache_len + pos
        if kind == "flash":
            used = (pos + 1).to(torch.int32)  # row i reads only its own pos_i + 1 keys
            cu_q, cu_k = self._cu_q[:b + 1], self._cu_k[:b + 1]
        elif kind == "sdpa":
            # Additive mask shared by all layers: a slot sees cache positions up to its own.
            mask = torch.where(self.slot_index[:length][None, :] <= pos[:, None], 0.0, self._neg_inf)
            mask = mask.to(self.dtype)[:, None, None]
        group = self.n_heads // self.n_kv
        x = self._embed(tok)
        for li, layer in enumerate(self._layers):
            keys, values = self.kv_cache[li, 0], self.kv_cache[li, 1]   # [slots, cache_len, kv, dim]
            if kind == "triton":  # rotary and the cache write happen in the kernel
                qkv = self._qkv_raw_fn(x, layer.ln1, layer.eps1, layer.w_qkv, layer.b_qkv, self.n_heads, self.n_kv)
                o = self._decode_attention(qkv, keys, values, pos, self.cos, self.sin, self.n_heads, self.scale)
                x = self._layer_rest(layer, x, o.reshape(b, -1))
                continue
            q, kv = self._layer_qkv(layer, x, cos, sin)
            if kind == "flash":
                self._write_kv(li, where, kv)
                o = _flash_varlen(q, keys.view(-1, self.n_kv, self.head_dim), values.view(-1, self.n_kv, self.head_dim),
                                  cu_q, cu_k, 1, self.cache_len, self.scale, causal=False, seqused_k=used)
            else:
                self._write_kv(li, where, kv)
                # Query heads sharing a key/value head become that head's query rows (no k/v repeat).
                o = F.scaled_dot_product_attention(q.view(b, self.n_kv, group, self.head_dim),
                                                   keys[:b, :length].transpose(1, 2), values[:b, :length].transpose(1, 2),
                                                   attn_mask=mask, scale=self.scale)
            x = self._layer_rest(layer, x, o.reshape(b, -1))
        logits = self._head(self._norm(x)).float()
        nxt = self._select(logits, self.temperature[:b], self.top_p[:b], self.sample[:b], with_sampling)
        self.next_tokens[:b].copy_(nxt)
        self.tokens[:b].copy_(nxt)
        self.pos[:b].add_(self.active[:b])

    def _launch_step(self, b: int, length: int, with_sampling: bool) -> None:
        if self.attention != "sdpa":
            length = self.cache_len  # each row reads its own length; one graph serves all
        if not self.use_graphs:
            self._step(b, length, with_sampling)
            return
        key = (b, length, with_sampling)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(key)
        graph.replay()

    def _capture(self, key) -> "torch.cuda.CUDAGraph":
        # Warm-up runs execute for real: keep the state they advance, and let them write the same
        # keys/values the real step will write at those positions.
        saved = [t.clone() for t in (self.tokens, self.pos, self.next_tokens)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                for t, s in zip((self.tokens, self.pos, self.next_tokens), saved):
                    t.copy_(s)
                self._step(*key)
        torch.cuda.current_stream().wait_stream(side)
        for t, s in zip((self.tokens, self.pos, self.next_tokens), saved):
            t.copy_(s)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._step(*key)
        self._graphs[key] = graph
        self.stats["graphs"] += 1
        return graph

    # ---------------------------------------------------------------- the worker
    def _run(self) -> None:
        try:
            with torch.no_grad():
                self._loop()
        except BaseException as exc:  # the engine is dead: no request may wait forever
            log.exception("batching engine stopped")
            self._stopping = True
            self._fail_all(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for r in [r for r in self._slots if r is not None]:
            if not r.future.done():
                r.future.set_exception(exc)
        while True:
            try:
                r = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(r, _Request) and not r.future.done():
                r.future.set_exception(exc)

    def _take_new(self, block: bool) -> list[_Request]:
        """Requests to admit now. Idle: wait for one, then up to max_wait for the batch to fill.
        Busy: whatever is already queued, up to the free slots (they join the running batch)."""
        free = sum(1 for r in self._slots if r is None)
        new: list[_Request] = []
        if free == 0:
            return new
        if block:
            first = self._queue.get()
            if first is None:
                return [None]  # type: ignore[list-item]
            if isinstance(first, _Call):
                first.fn()  # idle: nothing is in flight
                return new
            new.append(first)
            deadline = time.perf_counter() + self.max_wait_s
            while len(new) < free:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    r = self._queue.get(timeout=left)
                except queue.Empty:
                    break
                if r is None:
                    self._stopping = True
                    break
                if isinstance(r, _Call):
                    self._calls.append(r)
                    continue
                new.append(r)
            return new
        while len(new) < free:
            try:
                r = self._queue.get_nowait()
            except queue.Empty:
                break
            if r is None:
                self._stopping = True
                break
            if isinstance(r, _Call):
                self._calls.append(r)
                continue
            new.append(r)
        return new

    def _admit(self, new: list[_Request]) -> None:
        t0 = time.perf_counter()
        try:
            self._admit_now(new)
        finally:
            self.stats["admit_s"] += time.perf_counter() - t0

    def _admit_now(self, new: list[_Request]) -> None:
        new = [r for r in new if r.future.set_running_or_notify_cancel()]
        if not new:
            return
        free = [i for i, r in enumerate(self._slots) if r is None]
        for r, slot in zip(new, free):
            r.slot = slot
        for group in prefill_groups(new):
            self._prefill_group(group)

    def _prefill_group(self, reqs: list[_Request]) -> None:
        self.stats["prefills"] += 1
        dev = self.device
        slots = torch.tensor([r.slot for r in reqs], device=dev)
        temp = torch.tensor([r.params.temperature for r in reqs], dtype=torch.float32, device=dev)
        top_p = torch.tensor([r.params.top_p for r in reqs], dtype=torch.float32, device=dev)
        sample = torch.tensor([r.params.do_sample for r in reqs], device=dev)
        logits = self._prefill(reqs)
        first = self._select(logits, temp, top_p, sample, bool(sample.any()))
        first_host = first.tolist()
        for r, tok in zip(reqs, first_host):
            r.pos = len(r.prompt_ids)
            if self._accept(r, tok):
                continue
            self._slots[r.slot] = r
        live = [i for i, r in enumerate(reqs) if self._slots[r.slot] is r]
        if live:
            idx = torch.tensor(live, device=dev)
            s = slots[idx]
            self.tokens[s] = first[idx]
            self.pos[s] = torch.tensor([reqs[i].pos for i in live], device=dev)
            self.active[s] = 1
            self.temperature[s] = temp[idx]
            self.top_p[s] = top_p[idx]
            self.sample[s] = sample[idx]

    def _accept(self, r: _Request, tok: int) -> bool:
        """Record one generated token; finish the request if it is done. True if finished."""
        p = r.params
        reason = None
        if tok in self.eos_ids and not p.ignore_eos:
            reason = "eos"
        else:
            r.generated.append(tok)
            if len(r.generated) >= p.max_new_tokens:
                reason = "length"
        text = None
        if p.stop and self.tokenizer is not None:
            text = self.tokenizer.decode(r.generated, skip_special_tokens=True)
            hits = [text.find(s) for s in p.stop if s in text]
            if hits:
                text, reason = text[:min(hits)], "stop"
        if reason is None:
            return False
        if text is None and self.tokenizer is not None:
            text = self.tokenizer.decode(r.generated, skip_special_tokens=True)
        if text is not None and p.return_full_text and r.prompt_text is not None:
            text = r.prompt_text + text
        r.future.set_result(GenerationResult(text, list(r.generated), len(r.prompt_ids), reason,
                                             time.perf_counter() - r.submitted))
        return True

    def _release(self, r: _Request) -> None:
        self._slots[r.slot] = None
        self.active[r.slot] = 0
        self.pos[r.slot] = 0

    def _loop(self) -> None:
        pending = None  # (host buffer, event, rows launched) of the step whose tokens are unread
        flip = 0
        while True:
            busy = any(r is not None for r in self._slots)
            if not busy and pending is None:
                while self._calls:
                    self._calls.pop(0).fn()
                if self._stopping:
                    return
                new = self._take_new(block=True)
                if new and new[0] is None:
                    return
            else:
                new = [] if self._stopping else self._take_new(block=False)
            if new:
                self._admit(new)
            rows = [(i, r) for i, r in enumerate(self._slots) if r is not None]
            current = None
            if rows:
                top = rows[-1][0] + 1
                b = self._bucket(top)
                need = max(r.pos for _, r in rows) + 1
                length = min(-(-need // LENGTH_BUCKET) * LENGTH_BUCKET, self.cache_len)
                self._launch_step(b, length, any(r.params.do_sample for _, r in rows))
                self.stats["steps"] += 1
                for _, r in rows:
                    r.pos += 1
                buf = self._host_tokens[flip]
                flip ^= 1
                buf[:b].copy_(self.next_tokens[:b], non_blocking=True)
                event = torch.cuda.Event() if self.device.type == "cuda" else None
                if event is not None:
                    event.record()
                current = (buf, event, rows)
            # Read the previous step's tokens while the GPU runs this one.
            if pending is not None:
                self._consume(pending)
            pending = current

    def _consume(self, pending) -> None:
        buf, event, rows = pending
        if event is not None:
            event.synchronize()
        tokens = buf.tolist()
        for slot, r in rows:
            if self._slots[slot] is not r:
                continue  # finished at the previous step; this extra token is discarded
            if self._accept(r, tokens[slot]):
                self._release(r)
