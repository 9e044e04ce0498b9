"""Serving throughput: our batching engine against one-request-at-a-time `generate()`.

For 1, 8, 32 and 64 concurrent clients (each sends one prompt at the same moment, for a few
rounds) it prints generated tokens/s and p50/p95 request latency, plus the decode step time and the
memory-bandwidth roofline (weights + KV-cache bytes read per step over the measured copy
bandwidth). The model is the TinyLlama-1.1B shape in bf16 with random weights; every request
generates exactly --new-tokens tokens (EOS ignored). Prompt lengths follow the DailyDialog mix
(write it once with --write-lengths where the dataset is, then pass --lengths).

  python benchmarks/serve_throughput.py                      # GPU, TinyLlama shape
  python benchmarks/serve_throughput.py --tiny               # CPU, seconds
  python benchmarks/serve_throughput.py --adapters 4         # + the same clients over 4 LoRA adapters
  python benchmarks/serve_throughput.py --write-lengths L.json   # needs llama_operator + datasets
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "workloads" / "serve"))

TINYLLAMA = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                 intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=512, max_position_embeddings=1024)


def write_lengths(path: str, mean_tokens: float = 127.0, n: int = 512) -> None:
    """Prompt lengths in tokens from DailyDialog's test conversations: character counts scaled so
    the mean is `mean_tokens` (the mean measured with TinyLlama's tokenizer)."""
    import datasets
    from llama_operator.local.demo.tinymodel import dailydialog_dir

    rows = datasets.load_from_disk(str(dailydialog_dir()))["test"]
    chars = [len(c) for c in rows["convo"]]
    scale = mean_tokens / statistics.mean(chars)
    rng = random.Random(0)
    lengths = [max(4, round(c * scale)) for c in rng.sample(chars, min(n, len(chars)))]
    Path(path).write_text(json.dumps(lengths))
    print(f"wrote {len(lengths)} lengths to {path}: mean {statistics.mean(lengths):.1f}, "
          f"max {max(lengths)}")


def percentile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def build_model(tiny: bool, fp32: bool = False):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    device = "cpu" if tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" or fp32 else torch.bfloat16
    cfg = LlamaConfig(**(TINY if tiny else TINYLLAMA), bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval(), device


def adapter_run(args, model, lengths, clients, vocab, rng, engine_kwargs, base) -> dict:
    """The clients again, their requests spread round-robin over --adapters random adapters."""
    import tempfile

    from batching_engine import BatchingEngine
    from lora_adapters import write_random_adapter
    from request_params import GenerationParams

    with tempfile.TemporaryDirectory() as tmp:
        dirs = {f"a{i}": write_random_adapter(model, Path(tmp) / f"a{i}", 16, i) for i in range(args.adapters)}
        engine = BatchingEngine(model, None, adapters=dirs, **engine_kwargs)
    engine.warmup(clients)
    names, turn, out = list(dirs), itertools.count(), {}

    def call(ids):
        p = GenerationParams(max_new_tokens=args.new_tokens, ignore_eos=True, adapter=names[next(turn) % len(names)])
        assert len(engine.submit(input_ids=ids, params=p).result().token_ids) == args.new_tokens

    for n in clients:
        run_clients(call, prompts_for(lengths, n, vocab, rng))  # captures this size's graphs
        walls = [run_clients(call, prompts_for(lengths, n, vocab, rng))[0] for _ in range(args.rounds)]
        out[n] = n * args.new_tokens * args.rounds / sum(walls)
        print(f"adapters clients {n:3d}: {out[n]:9.0f} tok/s over {len(names)} rank-16 adapters "
              f"({out[n] / base[n]['tokens_per_s']:.2f}x the base model's {base[n]['tokens_per_s']:.0f})", flush=True)
    # The decode step alone, each row on one of the adapters, as the base engine's step_ms is measured.
    import torch
    from model_runner import LENGTH_BUCKET
    length = -(-(int(statistics.mean(lengths)) + args.new_tokens // 2) // LENGTH_BUCKET) * LENGTH_BUCKET
    with torch.no_grad():
        for n in clients:
            b = min(n, engine.n_slots)
            engine.adapter_idx[:b] = torch.arange(b, device=engine.adapter_idx.device) % len(names) + 1
            for _ in range(3):
                engine._launch_step(b, length, False)
            sync(engine.adapter_idx.device.type)
            t0 = time.perf_counter()
            for _ in range(50):
                engine._launch_step(b, length, False)
            sync(engine.adapter_idx.device.type)
            print(f"adapters step {b}: {(time.perf_counter() - t0) / 50 * 1e3:.2f} ms", flush=True)
    engine.close()
    return out


def prompts_for(lengths, count, vocab, rng):
    return [[rng.randrange(3, vocab) for _ in range(rng.choice(lengths))] for _ in range(count)]


def run_clients(call, prompts):
    """Start one thread per prompt at the same moment; return (wall seconds, latencies)."""
    latencies = [0.0] * len(prompts)
    barrier = threading.Barrier(len(prompts) + 1)

    def client(i):
        barrier.wait()
        t0 = time.perf_counter()
        call(prompts[i])
        latencies[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies


def sync(device):
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    import torch
    n = (1 << 30) if device == "cuda" else (1 << 26)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    return 2 * n * reps / (time.perf_counter() - t0)


def check_against_generate(args, lengths, rng) -> None:
    """The engine (batched, CUDA graphs) must produce generate()'s greedy tokens."""
    import torch
    from batching_engine import BatchingEngine
    from request_params import GenerationParams

    model, device = build_model(args.tiny, fp32=True)
    prompts = prompts_for(lengths, 8, model.config.vocab_size, rng)
    engine = BatchingEngine(model, None, max_batch_size=8, max_len=max(lengths) + 64, compile_step=args.compile)
    params = GenerationParams(max_new_tokens=32)
    futures = [engine.submit(input_ids=p, params=params) for p in prompts]
    ours = [f.result().token_ids for f in futures]
    engine.close()
    same = 0
    for p, o in zip(prompts, ours):
        x = torch.tensor([p], device=device)
        with torch.no_grad():
            ref = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=32,
                                 do_sample=False, pad_token_id=0)[0, len(p):].tolist()
        same += ref in (o, o + [model.config.eos_token_id])  # the engine leaves EOS out of its answer
    print(f"check: {same}/{len(prompts)} batched greedy outputs equal generate()'s (float32)", flush=True)
    del model, engine
    if device == "cuda":
        torch.cuda.empty_cache()


def profile_step(model, batch, device, compiled=False, attention=None, context=256, adapters=0) -> int:
    """Kernel by kernel, what an eager decode step spends (graphs replay the same kernels), every
    row at `context` tokens (with `adapters`: rows spread over that many random rank-16 adapters)."""
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity, profile
    from batching_engine import BatchingEngine
    from lora_adapters import write_random_adapter
    from model_runner import LENGTH_BUCKET

    with tempfile.TemporaryDirectory() as tmp:
        dirs = {f"a{i}": write_random_adapter(model, Path(tmp) / f"a{i}", 16, i) for i in range(adapters)}
        engine = BatchingEngine(model, None, max_batch_size=batch, max_len=max(512, context + 8),
                                use_cuda_graphs=False, compile_step=compiled, attention=attention,
                                adapters=dirs or None)
    engine.close()
    if adapters:
        engine.adapter_idx[:batch] = torch.arange(batch, device=engine.adapter_idx.device) % adapters + 1
    engine.pos[:batch] = context - 1
    length = -(-context // LENGTH_BUCKET) * LENGTH_BUCKET
    with torch.no_grad():
        for _ in range(3):
            engine._step(batch, length, False)
        sync(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            engine._step(batch, length, False)
            sync(device)
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time for e in events)
    print(f"decode step{' (compiled)' if compiled else ''}, {engine.attention} attention, batch {batch}, "
          f"context {context}: {len(events)} kernels, {total / 1e3:.2f} ms of kernel time")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=25, max_name_column_width=70))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny model on the CPU (a smoke run)")
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of simultaneous requests per client count")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--lengths", help="JSON list of prompt lengths in tokens (default: a DailyDialog-like mix)")
    ap.add_argument("--write-lengths", metavar="PATH", help="derive the length mix from DailyDialog and exit")
    ap.add_argument("--baseline-clients", default="1,8",
                    help="client counts at which one-at-a-time generate() is measured; larger counts are "
                         "derived from its measured service time (a serial queue)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode step (fused kernels)")
    ap.add_argument("--attention", choices=("triton", "flash", "sdpa"),
                    help="attention kernels (default: triton decode + flash prefill where the GPU has them, "
                         "else masked SDPA); tests/workloads/serve/test_engine_gpu.py checks them against each other")
    ap.add_argument("--profile-context", type=int, default=256, help="context length of each row in --profile")
    ap.add_argument("--eager-prefill", action="store_true", help="run prefills eagerly (decode steps stay graphs)")
    ap.add_argument("--no-graphs", action="store_true", help="eager decode steps (to measure what graphs buy)")
    ap.add_argument("--out", help="write the full results as JSON here")
    ap.add_argument("--adapters", type=int, default=0, metavar="N",
                    help="also serve the clients over N random rank-16 LoRA adapters (all projections)")
    ap.add_argument("--profile", type=int, metavar="BATCH",
                    help="print the kernels of one decode step at this batch size (torch.profiler) and exit")
    ap.add_argument("--check", action="store_true",
                    help="first compare the engine's greedy tokens with generate()'s (float32 model)")
    args = ap.parse_args(argv)
    if args.write_lengths:
        write_lengths(args.write_lengths)
        return 0

    import torch
    import transformers
    from batching_engine import BatchingEngine
    from request_params import GenerationParams

    rng = random.Random(1)
    if args.lengths:
        lengths = json.loads(Path(args.lengths).read_text())
    else:  # a stand-in with DailyDialog's mean and spread
        lengths = [max(8, int(rng.lognormvariate(4.7, 0.5))) for _ in range(512)]
    if args.tiny:
        lengths = [max(2, n // 8) for n in lengths]
        args.new_tokens = min(args.new_tokens, 32)
    clients = [int(c) for c in args.clients.split(",")]
    if args.check:
        check_against_generate(args, lengths, rng)
    model, device = build_model(args.tiny)
    vocab = model.config.vocab_size
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device {gpu}; torch {torch.__version__}; transformers {transformers.__version__}; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params {model.dtype}; "
          f"prompt mean {statistics.mean(lengths):.1f} tokens; {args.new_tokens} new tokens", flush=True)
    params = GenerationParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    results = {"device": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
               "new_tokens": args.new_tokens, "prompt_mean": statistics.mean(lengths), "engine": {},
               "generate": {}}

    if args.profile:
        return profile_step(model, args.profile, device, args.compile, args.attention, args.profile_context,
                            args.adapters)
    engine_kwargs = dict(max_batch_size=args.max_batch, max_wait_ms=args.max_wait_ms,
                         max_len=max(lengths) + args.new_tokens + 8, use_cuda_graphs=False if args.no_graphs else None,
                         compile_step=args.compile, graph_prefill=not args.eager_prefill, attention=args.attention)
    engine = BatchingEngine(model, None, **engine_kwargs)
    results["attention"] = engine.attention
    t0 = time.perf_counter()
    captured = engine.warmup(clients)
    print(f"{engine.attention} attention; captured {captured} graphs in {time.perf_counter() - t0:.1f} s", flush=True)

    def engine_call(ids, p=params):
        res = engine.submit(input_ids=ids, params=p).result()
        assert len(res.token_ids) == p.max_new_tokens, len(res.token_ids)

    one = GenerationParams(max_new_tokens=1, ignore_eos=True)

    for n in clients:
        run_clients(engine_call, prompts_for(lengths, n, vocab, rng))  # captures this size's graphs
        walls, lat = [], []
        admit0 = engine.stats["admit_s"]
        for _ in range(args.rounds):
            wall, l = run_clients(engine_call, prompts_for(lengths, n, vocab, rng))
            walls.append(wall)
            lat += l
        tps = n * args.new_tokens * args.rounds / sum(walls)
        admit = (engine.stats["admit_s"] - admit0) / args.rounds
        # Time to first token: the same arrival pattern asking for one token (batch wait + prefill).
        ttft = statistics.median(run_clients(lambda ids: engine_call(ids, one), prompts_for(lengths, n, vocab, rng))[0]
                                 for _ in range(args.rounds))
        results["engine"][n] = dict(tokens_per_s=tps, p50_s=percentile(lat, 50), p95_s=percentile(lat, 95),
                                    first_token_round_s=ttft, admit_s_per_round=admit)
        print(f"engine   clients {n:3d}: {tps:9.0f} tok/s  p50 {percentile(lat, 50) * 1e3:7.1f} ms  "
              f"p95 {percentile(lat, 95) * 1e3:7.1f} ms  first-token round {ttft * 1e3:6.1f} ms  "
              f"admission {admit * 1e3:5.1f} ms a round", flush=True)

    # Decode step time at each batch size, context = mean prompt + half the new tokens.
    from model_runner import LENGTH_BUCKET
    ctx = int(statistics.mean(lengths)) + args.new_tokens // 2
    length = -(-ctx // LENGTH_BUCKET) * LENGTH_BUCKET
    step_ms = {}
    with torch.no_grad():
        for n in clients:
            b = min(n, engine.n_slots)
            for _ in range(3):
                engine._launch_step(b, length, False)
            sync(device)
            t0 = time.perf_counter()
            reps = 50
            for _ in range(reps):
                engine._launch_step(b, length, False)
            sync(device)
            step_ms[n] = (time.perf_counter() - t0) / reps * 1e3
    # Prefill alone (graph replay on the GPU) for n prompts of the mix, in free slots, packed into
    # groups of at most PREFILL_BUDGET tokens as admission packs them.
    from scheduler import Request, prefill_groups
    prefill_ms = {}
    with torch.no_grad():
        for n in clients:
            reqs = [Request(p, params, None, slot=i) for i, p in enumerate(prompts_for(lengths, min(n, engine.n_slots),
                                                                                         vocab, rng))]
            groups = prefill_groups(reqs)
            times = []
            for _ in range(4):
                sync(device)
                t0 = time.perf_counter()
                for group in groups:
                    engine._prefill(group)
                sync(device)
                times.append(time.perf_counter() - t0)
            prefill_ms[n] = statistics.median(times[1:]) * 1e3
            print(f"prefill  clients {n:3d}: {sum(len(r.prompt_ids) for r in reqs)} tokens in {prefill_ms[n]:.1f} ms",
                  flush=True)
    engine.close()
    if args.adapters:
        results["adapters"] = adapter_run(args, model, lengths, clients, vocab, rng, engine_kwargs, results["engine"])

    # Roofline: every decode step reads all weights but the embedding table, plus the KV cache.
    bw = copy_bandwidth(device)
    cfg = model.config
    elt = torch.finfo(model.dtype).bits // 8
    weight_bytes = sum(p.numel() for p in model.parameters()) * elt - model.model.embed_tokens.weight.numel() * elt
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * elt
    results.update(copy_bandwidth_Bps=bw, weight_bytes=weight_bytes, context=ctx, step_ms=step_ms,
                   prefill_ms=prefill_ms, roofline={})
    for n in clients:
        step_s = (weight_bytes + n * ctx * kv_per_token) / bw
        results["roofline"][n] = n / step_s

    # Baseline: one request at a time through generate() (a lock makes the clients queue).
    lock = threading.Lock()

    def generate_call(ids):
        x = torch.tensor([ids], device=device)
        with lock, torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new_tokens,
                                 min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
        assert out.shape[1] - x.shape[1] == args.new_tokens

    generate_call(prompts_for(lengths, 1, vocab, rng)[0])  # warm-up
    service = []
    for n in [int(c) for c in args.baseline_clients.split(",") if c]:
        wall, lat = run_clients(generate_call, prompts_for(lengths, n, vocab, rng))
        service.append(wall / n)
        tps = n * args.new_tokens / wall
        results["generate"][n] = dict(tokens_per_s=tps, p50_s=percentile(lat, 50), p95_s=percentile(lat, 95),
                                      measured=True)
    s = statistics.mean(service) if service else float("nan")
    for n in clients:
        if n not in results["generate"]:
            lat = [s * (i + 1) for i in range(n)]  # a serial queue of n requests arriving together
            results["generate"][n] = dict(tokens_per_s=args.new_tokens / s, p50_s=percentile(lat, 50),
                                          p95_s=percentile(lat, 95), measured=False)

    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    lone = results["engine"][clients[0]]["p95_s"] if clients[0] == 1 else float("nan")
    print(f"\ncopy bandwidth {bw / 1e12:.2f} TB/s; weights {weight_bytes / 1e9:.2f} GB; "
          f"context {ctx} tokens; KV {kv_per_token} B/token")
    print(f"{'clients':>7} | {'engine tok/s':>12} | {'p50 ms':>8} | {'p95 ms':>8} | {'p95/lone':>8} | "
          f"{'step ms':>7} | {'roofline':>8} | {'%roof':>5} | {'generate tok/s':>14} | {'gen p95 ms':>10} | {'x':>6}")
    for n in clients:
        e, g = results["engine"][n], results["generate"][n]
        mark = "" if g["measured"] else "*"
        print(f"{n:7d} | {e['tokens_per_s']:12.0f} | {e['p50_s'] * 1e3:8.1f} | {e['p95_s'] * 1e3:8.1f} | "
              f"{e['p95_s'] / lone:8.2f} | {step_ms[n]:7.2f} | {results['roofline'][n]:8.0f} | "
              f"{100 * e['tokens_per_s'] / results['roofline'][n]:5.1f} | {g['tokens_per_s']:13.0f}{mark} | "
              f"{g['p95_s'] * 1e3:9.0f}{mark} | {e['tokens_per_s'] / g['tokens_per_s']:6.1f}")
    print("* derived from the measured one-at-a-time service time (serial queue), not run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
