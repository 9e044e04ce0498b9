"""The mechanism under the batching engine: a Llama-family model run our way over a
preallocated KV cache of fixed slots, with CUDA-graph decode and prefill steps.

Why not `generate()`: with a static cache it spent 5 ms a step at batch 32 on an H100, mostly in
Python, and `torch.compile(mode="reduce-overhead")` over it broke. So the engine owns the loop:
a prefill writes the prompts' keys and values into their slots, then every decode step is one
CUDA-graph replay (captured per batch-size bucket and sampling), with the next token and
positions fed back on the device. On the CPU the same step runs eagerly.
The weights are the model's own modules (norms, projections, MLP); only attention and the cache
are ours. On the GPU, prefill attention is flash attention's varlen form (no mask) and decode
attention is our Triton kernel (decode_attention.py, rotary and the cache write included), each
row reading only its own length; elsewhere, masked SDPA over a bucketed prefix of the cache.
Nothing here decides which requests run: the caller (batching_engine.py) does, by scheduler.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from fused_layers import (
    ATTENTION,
    FusedLayer,
    default_attention,
    flash_attention_usable,
    flash_varlen,
    layer_functions,
    select_tokens,
)
from lora_adapters import (
    GROUP_OF,
    TARGETS,
    AdapterError,
    AdapterExistsError,
    AdapterNotFoundError,
    LoraBank,
    base_shapes,
    read_adapter,
)
from scheduler import PREFILL_BUDGET, round_up

if TYPE_CHECKING:
    from scheduler import Request

LENGTH_BUCKET = 128   # attention reads the cache up to the next multiple of this
PREFILL_BUCKET = 256   # captured prefills come in multiples of this many tokens
SLACK = 2             # slots past max_len: a finished row may run one more step before it is seen


class ModelRunner:
    """The model's weights fused, its KV cache of `n_slots` rows, and the steps over them. Driven
    from one thread (the engine's worker), which owns this state."""

    def __init__(self, model, n_slots: int, *, max_len: int | None = None, use_cuda_graphs: bool | None = None,
                 compile_step: bool = False, graph_prefill: bool = True, attention: str | None = None,
                 adapters: dict | None = None, max_loras: int | None = None, max_lora_rank: int = 16,
                 lora_targets=None):
        cfg = model.config
        if getattr(cfg, "model_type", "llama") not in ("llama", "mistral"):
            raise ValueError(f"model_type {cfg.model_type!r} is not a Llama-family model")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.max_len = int(max_len or min(getattr(cfg, "max_position_embeddings", 2048), 4096))
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
        self._step = self._decode_step
        self._qkv_fn, self._qkv_raw_fn, self._rest_fn = layer_functions(compile_step)

        inner = model.model
        self._embed, self._norm, self._head = inner.embed_tokens, inner.norm, model.lm_head
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.scale = self.head_dim ** -0.5
        self._layers = [FusedLayer(layer) for layer in inner.layers]
        self._init_adapters(model, adapters or {}, max_loras, max_lora_rank, lora_targets)

        if n_slots < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {n_slots}")
        self.n_slots = n_slots
        dev, n_layers = self.device, len(self._layers)
        # Whole buckets, so every attention length a step may use is a prefix of the cache.
        self.cache_len = round_up(self.max_len + SLACK, LENGTH_BUCKET)
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
        self.adapter_idx = torch.zeros(self.n_slots, dtype=torch.long, device=dev)  # 0: the base model
        pin = dev.type == "cuda"
        self._host_tokens = [torch.zeros(self.n_slots, dtype=torch.long, pin_memory=pin) for _ in range(2)]
        self._graphs: dict[tuple[int, int, bool], torch.cuda.CUDAGraph] = {}
        self._pool = None
        # Prefill inputs (token, prompt index, position, slot) packed into PREFILL_BUDGET tokens;
        # on the GPU the prefill is a graph too, per token-count bucket, as its eager launch
        # overhead (hundreds of small kernels) cost more than the work.
        self._p_in = torch.zeros((5, PREFILL_BUDGET), dtype=torch.long, device=dev)  # + adapter index
        self._p_last = torch.zeros(self.n_slots, dtype=torch.long, device=dev)
        self._p_cu = torch.zeros(self.n_slots + 2, dtype=torch.int32, device=dev)
        self._p_logits = torch.zeros((self.n_slots, model.config.vocab_size), dtype=torch.float32, device=dev)
        self._prefill_graphs: dict[int, torch.cuda.CUDAGraph] = {}

        # admit_s: host time spent admitting requests (prefill included), which decode steps wait on.
        self.stats = {"steps": 0, "prefills": 0, "graphs": 0, "admit_s": 0.0}

    def capture_graphs(self, buckets, prefill: bool) -> None:
        """Capture the decode graphs for these batch buckets at every attention length, and (with
        prefill) the prefill graphs for every token-count bucket, where not captured yet."""
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

    def _attention_lengths(self) -> range:
        """The key lengths a decode step is specialised for: flash attention reads each row's own
        length, so one covers all; the masked SDPA path reads a bucketed prefix of the cache."""
        if self.attention != "sdpa":
            return range(self.cache_len, self.cache_len + 1)
        return range(LENGTH_BUCKET, self.cache_len + 1, LENGTH_BUCKET)

    # ---------------------------------------------------------------- adapters
    def _init_adapters(self, model, adapters: dict, max_loras: int | None, max_rank: int, targets) -> None:
        """Stack the LoRA adapters {name: directory} per layer (lora_adapters.LoraBank); none and no
        max_loras: no adapter math at all. Slots past the given adapters stay free for install_adapter."""
        self.lora_bank = None
        self.adapter_ids: dict[str, int] = {}
        if not adapters and not max_loras:
            return
        shapes, n_layers = base_shapes(model), len(self._layers)
        read = [read_adapter(name, path, max_rank=max_rank, shapes=shapes, n_layers=n_layers)
                for name, path in adapters.items()]
        max_loras = max_loras or len(read)
        if len(read) > max_loras:
            raise ValueError(f"max_loras is {max_loras} but {len(read)} adapters were given")
        # Groups no adapter targets get no buffers (and no math); lora_targets reserves more for later.
        wanted = set(targets) if targets else (set().union(*(a.targets for a in read)) if read else set(TARGETS))
        unknown = sorted(wanted - set(TARGETS))
        if unknown:
            raise ValueError(f"lora_targets: {unknown[0]!r} is not one of {', '.join(TARGETS)}")
        self.lora_bank = LoraBank(shapes, n_layers, {GROUP_OF[m][0] for m in wanted}, max_loras, max_rank,
                                  self.dtype, self.device)
        for layer, bufs in zip(self._layers, self.lora_bank.layers):
            lora = {}
            for g, (a, b) in bufs.items():
                rows = layer.fold(g, a.shape[0])
                if rows is not None:
                    bufs[g] = (rows, b)  # the bank fills the folded rows from now on
                lora[g] = (None if rows is not None else a, b)
            layer.lora = lora
        for adapter in read:
            self.adapter_ids[adapter.name] = self.lora_bank.add(adapter)
        # sel = (index == these) per row: 1 in its adapter's column, none for index 0.
        self._lora_cols = torch.arange(1, max_loras + 1, device=self.device)

    def read_adapter(self, name: str, path):
        """Read and check one adapter directory against this engine (lora_adapters.LoraAdapter, on
        the host). Touches no engine state, so it runs on any thread: reading a big adapter does not
        hold up the steps."""
        if self.lora_bank is None:
            raise AdapterError(name, "max_loras", "this engine has no adapter slots; start it with adapters or "
                                                  "max_loras (serving.properties option.enable_lora=true and "
                                                  "option.max_loras=N)")
        if name in self.adapter_ids:
            raise AdapterExistsError(name, "name", "already loaded; remove it first")
        return read_adapter(name, path, max_rank=self.lora_bank.max_rank, shapes=base_shapes(self.model),
                            n_layers=len(self._layers))

    def install_adapter(self, adapter) -> int:
        """Copy a read adapter into the lowest free slot (in place, so captured graphs stay valid);
        returns its index. Call on the thread that runs the steps, between steps; requests may be
        in flight (no running row's index is a free slot, and the copies queue behind the step
        already launched on the device)."""
        index = self.lora_bank.add(adapter)
        # A new dict, not an update: other threads read adapter_ids (adapter_names) meanwhile.
        self.adapter_ids = {**self.adapter_ids, adapter.name: index}
        return index

    def load_adapter(self, name: str, path) -> int:
        """read_adapter then install_adapter, on the thread that runs the steps."""
        return self.install_adapter(self.read_adapter(name, path))

    def unload_adapter(self, name: str) -> int:
        """Zero the adapter's slot and free it for the next adapter; returns the index it had. Call
        on the thread that runs the steps once no admitted row uses the adapter. The name may
        already be out of adapter_ids (the engine takes it out first, so that no new request
        names it, and keeps the slot reserved in the bank until its running rows finish)."""
        if self.lora_bank is None or name not in self.lora_bank.names:
            loaded = ", ".join(self.adapter_ids) or "none"
            raise AdapterNotFoundError(name, "name", f"not loaded (loaded: {loaded})")
        self.adapter_ids = {n: i for n, i in self.adapter_ids.items() if n != name}
        return self.lora_bank.remove(name)

    def _selection(self, index):
        """[N, max_loras] 0/1 in the model's dtype from adapter indices [N] (0: none)."""
        if self.lora_bank is None:
            return None
        return (index[:, None] == self._lora_cols[None, :]).to(self.dtype)

    # ---------------------------------------------------------------- the model, our way
    def _layer_qkv(self, layer, x, cos, sin, sel=None):
        """Norm, fused q/k/v projection and rotary embedding for x [N, hidden], cos/sin [N, D].
        Returns q [N, H, D] and the new keys and values [N, 2, KV, D]."""
        return self._qkv_fn(x, layer.ln1, layer.eps1, layer.matrix["qkv"], layer.b_qkv, cos, sin, self.n_heads, self.n_kv,
                            layer.lora.get("qkv"), sel)

    def _layer_rest(self, layer, x, attn_out, sel=None):
        lora = layer.lora
        return self._rest_fn(x, attn_out, layer.matrix["o"], layer.b_o, layer.ln2, layer.eps2, layer.matrix["gu"],
                             layer.matrix["down"],
                             layer.act, lora.get("o"), lora.get("gu"), lora.get("down"), sel)

    def _prefill(self, reqs: list[Request]) -> torch.Tensor:
        """Run the prompts packed into one sequence (attention kept within each prompt), store
        their keys/values in their slots, and return each prompt's last-token logits [n, vocab]."""
        lengths = [len(r.prompt_ids) for r in reqs]
        total = sum(lengths)
        n_tok = round_up(total, PREFILL_BUCKET) if self.graph_prefill else total
        pad = n_tok - total
        packed = torch.tensor([
            [t for r in reqs for t in r.prompt_ids] + [0] * pad,
            [i for i, n in enumerate(lengths) for _ in range(n)] + [-1] * pad,  # padding: its own "prompt"
            [p for n in lengths for p in range(n)] + [0] * pad,
            [r.slot for r in reqs for _ in r.prompt_ids] + [self.n_slots] * pad,
            [self.adapter_ids.get(r.params.adapter, 0) for r in reqs for _ in r.prompt_ids] + [0] * pad,
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
        ids, seq, pos, slot, adapter = self._p_in[:, :n_tok]
        sel = self._selection(adapter)
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
            q, kv = self._layer_qkv(layer, x, cos, sin, sel)
            self._write_kv(li, where, kv)
            if flash:
                o = flash_varlen(q, kv[:, 0].contiguous(), kv[:, 1].contiguous(), self._p_cu, self._p_cu, max_q,
                                  max_q, self.scale, causal=True)
                x = self._layer_rest(layer, x, o.reshape(n_tok, -1), sel)
                continue
            k = kv[:, 0].transpose(0, 1).repeat_interleave(group, dim=0)
            v = kv[:, 1].transpose(0, 1).repeat_interleave(group, dim=0)
            o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None], attn_mask=mask[None, None],
                                               scale=self.scale)
            x = self._layer_rest(layer, x, o[0].transpose(0, 1).reshape(n_tok, -1), sel)
        self._p_logits.copy_(self._head(self._norm(x[self._p_last])).float())

    def _write_kv(self, layer: int, where, kv) -> None:
        """Store kv [N, 2, KV, D] at flat cache positions `where` (slot * cache_len + position)."""
        self.kv_cache[layer].view(2, -1, self.n_kv, self.head_dim)[:, where] = kv.transpose(0, 1)

    def _capture_prefill(self, n_tok: int) -> torch.cuda.CUDAGraph:
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
        sel = self._selection(self.adapter_idx[:b])  # read in the graph: admission updates it in place
        x = self._embed(tok)
        for li, layer in enumerate(self._layers):
            keys, values = self.kv_cache[li, 0], self.kv_cache[li, 1]   # [slots, cache_len, kv, dim]
            if kind == "triton":  # rotary and the cache write happen in the kernel
                qkv = self._qkv_raw_fn(x, layer.ln1, layer.eps1, layer.matrix["qkv"], layer.b_qkv, self.n_heads, self.n_kv,
                                       layer.lora.get("qkv"), sel)
                o = self._decode_attention(qkv, keys, values, pos, self.cos, self.sin, self.n_heads, self.scale)
                x = self._layer_rest(layer, x, o.reshape(b, -1), sel)
                continue
            q, kv = self._layer_qkv(layer, x, cos, sin, sel)
            if kind == "flash":
                self._write_kv(li, where, kv)
                o = flash_varlen(q, keys.view(-1, self.n_kv, self.head_dim), values.view(-1, self.n_kv, self.head_dim),
                                  cu_q, cu_k, 1, self.cache_len, self.scale, causal=False, seqused_k=used)
            else:
                self._write_kv(li, where, kv)
                # Query heads sharing a key/value head become that head's query rows (no k/v repeat).
                o = F.scaled_dot_product_attention(q.view(b, self.n_kv, group, self.head_dim),
                                                   keys[:b, :length].transpose(1, 2), values[:b, :length].transpose(1, 2),
                                                   attn_mask=mask, scale=self.scale)
            x = self._layer_rest(layer, x, o.reshape(b, -1), sel)
        logits = self._head(self._norm(x)).float()
        nxt = select_tokens(logits, self.temperature[:b], self.top_p[:b], self.sample[:b], with_sampling)
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

    def _capture(self, key) -> torch.cuda.CUDAGraph:
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

