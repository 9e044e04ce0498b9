"""The engine's GPU paths (flash attention over the packed cache, our Triton decode kernel, CUDA
graphs) against the masked SDPA path. Runs only where a CUDA GPU of compute capability 8.0+ is
present (the device machine: `python3 -m pytest tests/workloads/serve/test_engine_gpu.py`); CI has none."""

import random
from concurrent.futures import Future

import pytest
import torch
import torch.nn.functional as F
from batching_engine import BatchingEngine
from fused_layers import flash_attention_usable, flash_varlen
from model_runner import LENGTH_BUCKET
from request_params import GenerationParams
from scheduler import Request

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not flash_attention_usable(torch.device("cuda"), torch.bfloat16),
    reason="needs a CUDA GPU with flash attention (compute capability 8.0+)")


def reference(q, k, v, q_len, k_len, scale):
    """One sequence: q [q_len, H, D] attends causally (bottom-right aligned) to k/v [k_len, KV, D]."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    mask = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
    o = F.scaled_dot_product_attention(q.transpose(0, 1).float(), k.transpose(0, 1).float(),
                                       v.transpose(0, 1).float(), attn_mask=mask, scale=scale)
    return o.transpose(0, 1)


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


ROWS = [1, 17, 200, 256, 64, 0]  # keys before this step's token (0: a row at its first position)


def _decode_inputs(seed=0, heads=32, kv=4, dim=64, cache_len=320):
    torch.manual_seed(seed)
    dev = "cuda"
    cache = torch.randn(2, len(ROWS) + 1, cache_len, kv, dim, device=dev, dtype=torch.bfloat16)
    qkv = torch.randn(len(ROWS), heads + 2 * kv, dim, device=dev, dtype=torch.bfloat16)
    q = qkv[:, :heads]                       # strided, as the engine's fused projection gives it
    kv_new = qkv[:, heads:].reshape(len(ROWS), 2, kv, dim)
    pos = torch.tensor(ROWS, device=dev)
    return cache, q, kv_new, pos


def _rotary(x, cos, sin):
    """The engine's rotary: x * cos + roll(x, D/2) * sin' (sin' with its first half negated)."""
    return (x.float() * cos.float() + x.float().roll(x.shape[-1] // 2, dims=-1) * sin.float()).to(x.dtype)


def test_triton_decode_kernel_rotates_writes_the_cache_and_attends_up_to_each_rows_position():
    from decode_attention import decode_attention

    cache, _, _, pos = _decode_inputs()
    heads, kv, dim = 32, 4, 64
    qkv = torch.randn(len(ROWS), heads + 2 * kv, dim, device="cuda", dtype=torch.bfloat16)
    angles = torch.rand(cache.shape[2], dim // 2, device="cuda") * 6.28
    cos = torch.cat((angles.cos(), angles.cos()), -1).to(torch.bfloat16)
    sin = torch.cat((-angles.sin(), angles.sin()), -1).to(torch.bfloat16)
    before = cache.clone()
    scale = dim ** -0.5
    out = decode_attention(qkv, cache[0], cache[1], pos, cos, sin, heads, scale)
    written = torch.zeros(cache.shape[:3], dtype=torch.bool, device="cuda")
    for i, p in enumerate(ROWS):
        written[:, i, p] = True
        torch.testing.assert_close(cache[0, i, p], _rotary(qkv[i, heads:heads + kv], cos[p], sin[p]),
                                   atol=1e-2, rtol=1e-2)
        assert torch.equal(cache[1, i, p], qkv[i, heads + kv:])
    assert torch.equal(cache[~written], before[~written])  # nothing else in the cache moved
    for i, p in enumerate(ROWS):
        q = _rotary(qkv[i:i + 1, :heads], cos[p], sin[p])
        ref = reference(q, cache[0, i, :p + 1], cache[1, i, :p + 1], 1, p + 1, scale)
        assert rel_err(out[i:i + 1], ref) < 1e-2, i


def test_flash_decode_reads_each_row_only_up_to_its_own_length():
    cache, q, kv_new, pos = _decode_inputs(seed=1)
    n_rows, cache_len, kv, dim = len(ROWS), cache.shape[2], cache.shape[3], cache.shape[4]
    for i, p in enumerate(ROWS):
        cache[:, i, p] = kv_new[i]
    cu_q = torch.arange(n_rows + 1, dtype=torch.int32, device="cuda")
    used = (pos + 1).to(torch.int32)
    keys, values = cache[0].reshape(-1, kv, dim), cache[1].reshape(-1, kv, dim)
    out = flash_varlen(q, keys, values, cu_q, cu_q * cache_len, 1, cache_len, dim ** -0.5, False, used)
    for i, p in enumerate(ROWS):
        ref = reference(q[i:i + 1], cache[0, i, :p + 1], cache[1, i, :p + 1], 1, p + 1, dim ** -0.5)
        assert rel_err(out[i:i + 1], ref) < 1e-2, i


def test_packed_prefill_keeps_attention_inside_each_prompt():
    torch.manual_seed(1)
    dev, heads, kv, dim = "cuda", 8, 2, 64
    lengths = [5, 130, 1, 64]
    n_tok = 256  # padded like a captured prefill: the padding is one more sequence
    cu = torch.tensor([0, 5, 135, 136, 200, n_tok, n_tok], dtype=torch.int32, device=dev)
    q = torch.randn(n_tok, heads, dim, device=dev, dtype=torch.bfloat16)
    k = torch.randn(n_tok, kv, dim, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    out = flash_varlen(q, k, v, cu, cu, n_tok, n_tok, dim ** -0.5, True)
    start = 0
    for n in lengths:
        ref = reference(q[start:start + n], k[start:start + n], v[start:start + n], n, n, dim ** -0.5)
        assert rel_err(out[start:start + n], ref) < 1e-2, n
        start += n


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                      intermediate_size=512, vocab_size=1024, max_position_embeddings=1024,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device("cuda"):
        return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


def _prompts(n=12, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, 1024) for _ in range(rng.choice([3, 40, 129, 300]))] for _ in range(n)]


def _teacher_forced(model, attention, prompts, forced, adapters=None, rows=None, compile_step=False):
    """Prefill the prompts into slots 0..n-1, then run one decode step (graph replay) per forced
    token column. Returns the prefill logits and the whole written cache. rows: each prompt's
    adapter (None: the base model) among `adapters` {name: directory}."""
    engine = BatchingEngine(model, None, max_batch_size=len(prompts), max_len=512, attention=attention,
                            adapters=adapters, compile_step=compile_step)
    engine.close()  # driven by hand on this thread from here on
    return _drive(engine, prompts, forced, rows)


def _drive(engine, prompts, forced, rows=None):
    """_teacher_forced's prefill and decode steps on an engine already built (and closed)."""
    rows = rows or [None] * len(prompts)
    reqs = [Request(p, GenerationParams(max_new_tokens=forced.shape[1], adapter=a), Future(), slot=i)
            for i, (p, a) in enumerate(zip(prompts, rows))]
    b = len(prompts)
    with torch.no_grad():
        logits = engine._prefill(reqs).clone()
        engine.pos[:b] = torch.tensor([len(p) for p in prompts])
        engine.active[:b] = 1
        engine.adapter_idx[:b] = torch.tensor([engine.adapter_ids.get(a, 0) for a in rows])
        for t in range(forced.shape[1]):
            engine.tokens[:b] = forced[:, t]
            need = max(len(p) for p in prompts) + t + 1
            engine._launch_step(b, -(-need // LENGTH_BUCKET) * LENGTH_BUCKET, False)
    torch.cuda.synchronize()
    assert engine.stats["graphs"] > 0
    return logits, engine.kv_cache[:, :, :b].clone()


@pytest.mark.parametrize("attention", ["flash", "triton"])
def test_engine_prefill_and_decode_match_the_masked_path(attention):
    """Same model, same forced tokens: every layer's keys and values (which depend on the
    attention outputs of the layers below) and the prefill logits agree with masked SDPA's to
    bf16 rounding. A wrong offset, length or head grouping gives errors of order 1."""
    model = _model()
    prompts = _prompts()
    forced = torch.randint(3, 1024, (len(prompts), 20), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    ref_logits, ref_cache = _teacher_forced(model, "sdpa", prompts, forced)
    logits, cache = _teacher_forced(model, attention, prompts, forced)
    assert rel_err(logits, ref_logits) < 2e-2
    assert rel_err(cache, ref_cache) < 2e-2
    assert rel_err(cache[-1], ref_cache[-1]) < 2e-2  # the top layer, where errors would pile up


def test_concurrent_answers_are_greedy_under_the_reference_model():
    """16 concurrent requests through the default GPU engine (submit, batching, graphs): each
    chosen token is the reference model's top token, up to bf16 noise in near-ties."""
    model = _model()
    prompts = _prompts(16, seed=2)
    engine = BatchingEngine(model, None, max_batch_size=16, max_len=512)
    assert engine.attention == "triton"
    try:
        futures = [engine.submit(input_ids=p, params=GenerationParams(max_new_tokens=24, ignore_eos=True))
                   for p in prompts]
        answers = [f.result(timeout=300).token_ids for f in futures]
    finally:
        engine.close()
    worst = 0.0
    for p, a in zip(prompts, answers):
        assert len(a) == 24
        with torch.no_grad():
            logits = model(torch.tensor([p + a], device="cuda")).logits[0, len(p) - 1:-1].float()
        top = logits.max(-1).values
        chosen = logits.gather(-1, torch.tensor(a, device="cuda")[:, None])[:, 0]
        spread = top - logits.median(-1).values
        worst = max(worst, ((top - chosen) / spread).max().item())
    assert worst < 0.1, worst


def _merged(adapter_dir):
    """The test model with the adapter merged into its weights (W + scale * B @ A)."""
    from lora_adapters import base_shapes, read_adapter

    model = _model()
    adapter = read_adapter("m", adapter_dir, max_rank=64, shapes=base_shapes(model), n_layers=len(model.model.layers))
    for (li, module), (a, b) in adapter.weights.items():
        layer = model.model.layers[li]
        linear = getattr(layer.self_attn if hasattr(layer.self_attn, module) else layer.mlp, module)
        linear.weight.data += (adapter.scale * b.float() @ a.float()).to(linear.weight)
    return model


def _each_row_matches_its_merged_model(logits, cache, base_logits, rows, dirs, prompts, forced):
    """Rows of each adapter (None: the base model) agree with that adapter's merged model (masked
    SDPA path) to bf16 rounding, and an adapter moves them by far more than that."""
    for name in dict.fromkeys(rows):
        idx = [i for i, r in enumerate(rows) if r == name]
        ref_logits, ref_cache = _teacher_forced(_merged(dirs[name]) if name else _model(), "sdpa",
                                                [prompts[i] for i in idx], forced[idx])
        assert rel_err(logits[idx], ref_logits) < 3e-2, name
        assert rel_err(cache[:, :, idx], ref_cache) < 3e-2, name
        if name:
            assert rel_err(base_logits[idx], ref_logits) > 0.2, name


@pytest.mark.parametrize("attention, compile_step", [("sdpa", False), ("triton", False), ("triton", True)])
def test_lora_rows_of_one_batch_match_each_merged_model(attention, compile_step, tmp_path):
    """Two adapters of different ranks and base-model rows in one batch, prefill and graph-replayed
    decode steps: each row's logits and keys/values agree with its merged model's (masked SDPA path)
    to bf16 rounding, and the adapters change them by far more than that."""
    from lora_adapters import write_random_adapter

    dirs = {f"a{i}": write_random_adapter(_model(), tmp_path / f"a{i}", 8 * (i + 1), seed=i, b_std=0.05)
            for i in range(2)}
    prompts = _prompts(6, seed=3)
    rows = ["a0", "a1", None, "a0", "a1", None]
    forced = torch.randint(3, 1024, (len(prompts), 12), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    logits, cache = _teacher_forced(_model(), attention, prompts, forced, dirs, rows, compile_step)
    base_logits, _ = _teacher_forced(_model(), "sdpa", prompts, forced)
    _each_row_matches_its_merged_model(logits, cache, base_logits, rows, dirs, prompts, forced)


@pytest.mark.parametrize("compile_step", [False, True])
def test_an_adapter_loaded_where_another_was_removed_runs_in_the_graphs_captured_before(compile_step, tmp_path):
    """Graphs captured while the slots were empty; a0 (rank 16) loaded, removed, a1 (rank 8) loaded
    into its slot: a1's rows agree with a1's merged model (nothing of a0 is left, and the captured
    graphs read the stacked weights in place), base rows with the base model."""
    from lora_adapters import write_random_adapter

    dirs = {name: write_random_adapter(_model(), tmp_path / name, rank, seed=i + 5, b_std=0.05)
            for i, (name, rank) in enumerate([("a0", 16), ("a1", 8)])}
    prompts = _prompts(4, seed=4)
    forced = torch.randint(3, 1024, (len(prompts), 12), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    engine = BatchingEngine(_model(), None, max_batch_size=len(prompts), max_len=512, attention="triton",
                            max_loras=2, max_lora_rank=16, compile_step=compile_step)
    engine.close()
    base_logits, _ = _drive(engine, prompts, forced)
    graphs = engine.stats["graphs"]
    assert engine.load_adapter("a0", dirs["a0"]) == 1
    assert engine.unload_adapter("a0") == 1
    assert engine.load_adapter("a1", dirs["a1"]) == 1
    rows = ["a1", None, "a1", None]
    logits, cache = _drive(engine, prompts, forced, rows)
    assert engine.stats["graphs"] == graphs, "the steps replayed the graphs captured before the adapters came"
    _each_row_matches_its_merged_model(logits, cache, base_logits, rows, dirs, prompts, forced)
