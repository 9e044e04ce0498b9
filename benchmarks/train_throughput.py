"""Fine-tuning throughput: the seed recipe against ours, side by side, on the DailyDialog length mix.

    python benchmarks/train_throughput.py                 # TinyLlama-1.1B shape, needs a GPU
    python benchmarks/train_throughput.py --config tiny   # seconds on a CPU
    python benchmarks/train_throughput.py --variants seed,flex-flce-fused-autotune-bs18 --steps 20
    python benchmarks/train_throughput.py --peft lora      # each variant also with LoRA (row NAME+lora)
    python benchmarks/train_throughput.py --peft lora --lora-dropout 0.05,0   # one LoRA row per dropout

On the H100, set ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` (batch 18 fits in 64 GiB with it);
the measured rows are in ``TRAIN_RESULTS.md``.

Every variant trains a freshly initialised (random) Llama on random token ids whose lengths are
drawn from ``dailydialog_lengths.json`` (DailyDialog train rows rendered as training text and
tokenised with a 32000-entry BPE tokenizer, mean ~125 tokens; rebuild it with
``dailydialog_lengths.py``). Columns:

- ``real_tok/s``: non-pad tokens trained per second over the timed steps (after warm-up).
- ``MFU``: useful FLOPs / (time x ceiling). Useful FLOPs = 6 * N * real tokens + attention within
  each conversation, 6 * layers * hidden * sum(len^2) (causal half of QK^T and AV, forward and
  backward); N counts every parameter except the input embedding (a lookup, not a matmul). Padding
  and cross-conversation attention count as waste. Ceiling: 788 TFLOP/s (bf16 dense matmul
  measured on the H100) unless ``--ceiling`` says otherwise; the run also measures its own.
- ``peak_GiB``: ``torch.cuda.max_memory_allocated`` during the variant.

Recipes: ``seed`` pads every example to 1536, batch 1, gradient checkpointing, fp16 autocast with a
GradScaler, a plain HF-style step (``model(**batch).loss``, backward, clip, AdamW). Ours packs
conversations into rows of 2048 with no attention across them, bf16 autocast, and the fast paths
of ``workloads/train/fastpath.py``. Before timing, the GPU run checks that the document-masked
packed forward gives the same per-token loss as each conversation alone.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LENGTHS_JSON = Path(__file__).with_name("dailydialog_lengths.json")


def load_fastpath():
    """workloads/ is shipped to the training job as plain files, not a package: load by path."""
    path = ROOT / "workloads" / "train" / "fastpath.py"
    spec = importlib.util.spec_from_file_location("workloads_train_fastpath", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


fastpath = load_fastpath()

CONFIGS = {
    "tinyllama": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                      intermediate_size=5632, vocab_size=32000, seq=2048, seed_pad=1536, length_scale=1.0),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, seq=256, seed_pad=192, length_scale=0.125),
}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    packed: bool = True
    batch: int = 8
    dtype: str = "bf16"           # autocast dtype; parameters stay fp32
    checkpointing: bool = False
    doc_mask: bool = True         # no attention across conversations
    flex: bool = True             # document mask through flex attention (else transformers' own)
    liger: bool = False
    fused_adamw: bool = False
    compile_layers: bool | str = False  # True, or a torch.compile mode


VARIANTS = {v.name: v for v in [
    Variant("seed", packed=False, batch=1, dtype="fp16", checkpointing=True, doc_mask=False, flex=False),
    Variant("packed-nomask-bs8", doc_mask=False, flex=False),
    Variant("packed-posids-sdpa-bs8", flex=False),
    Variant("flex-bs8"),
    Variant("flex-liger-bs8", liger=True),
    Variant("flex-liger-fused-bs8", liger=True, fused_adamw=True),
    Variant("flex-liger-fused-bs16", batch=16, liger=True, fused_adamw=True),
    Variant("flex-liger-fused-bs20", batch=20, liger=True, fused_adamw=True),
    Variant("flex-flce-fused-compile-bs8", liger=True, fused_adamw=True, compile_layers=True),
    Variant("flex-flce-fused-compile-bs12", batch=12, liger=True, fused_adamw=True, compile_layers=True),
    Variant("flex-flce-fused-compile-bs16", batch=16, liger=True, fused_adamw=True, compile_layers=True),
    Variant("flex-flce-fused-compile-bs18", batch=18, liger=True, fused_adamw=True, compile_layers=True),
    # Batches a LoRA run fits (its frozen base keeps no gradients or optimizer state)
    Variant("flex-flce-fused-compile-bs24", batch=24, liger=True, fused_adamw=True, compile_layers=True),
    Variant("flex-flce-fused-compile-bs32", batch=32, liger=True, fused_adamw=True, compile_layers=True),
    Variant("flex-flce-fused-autotune-bs16", batch=16, liger=True, fused_adamw=True,
            compile_layers="max-autotune-no-cudagraphs"),
    Variant("flex-flce-fused-autotune-bs18", batch=18, liger=True, fused_adamw=True,
            compile_layers="max-autotune-no-cudagraphs"),
    Variant("nomask-liger-fused-bs16", batch=16, doc_mask=False, flex=False, liger=True, fused_adamw=True),
]}
DEFAULT_GPU = ["seed", "packed-nomask-bs8", "flex-bs8", "flex-liger-bs8", "flex-liger-fused-bs8",
               "flex-flce-fused-compile-bs16", "flex-flce-fused-autotune-bs18"]
DEFAULT_CPU = ["seed", "packed-posids-sdpa-bs8"]
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_lengths(scale: float, seq: int) -> list[int]:
    lengths = json.loads(LENGTHS_JSON.read_text())["lengths"]
    return [max(4, min(seq, round(n * scale))) for n in lengths]


class Batches:
    """Random token ids with DailyDialog lengths; padded (seed) or packed (ours) rows."""

    def __init__(self, lengths: list[int], vocab: int, seed: int = 0):
        self.lengths, self.vocab = lengths, vocab
        self.rng = random.Random(seed)
        self._pending: int | None = None
    def _next_len(self) -> int:
        if self._pending is not None:
            n, self._pending = self._pending, None
            return n
        return self.rng.choice(self.lengths)
    def _ids(self, n: int) -> torch.Tensor:
        return torch.randint(3, self.vocab, (n,), generator=torch.Generator().manual_seed(self.rng.getrandbits(31)))
    def padded(self, batch: int, pad_to: int) -> tuple[dict, int, list[int]]:
        ids = torch.zeros(batch, pad_to, dtype=torch.long)
        mask = torch.zeros(batch, pad_to, dtype=torch.long)
        docs = []
        for b in range(batch):
            n = min(self._next_len(), pad_to)
            ids[b, :n] = self._ids(n)
            mask[b, :n] = 1
            docs.append(n)
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}, int(mask.sum()), docs
    def packed(self, batch: int, seq: int) -> tuple[dict, int, list[int]]:
        ids = torch.zeros(batch, seq, dtype=torch.long)
        pos = torch.zeros(batch, seq, dtype=torch.long)
        labels = torch.full((batch, seq), -100, dtype=torch.long)
        docs = []
        for b in range(batch):
            at = 0
            while True:
                n = self._next_len()
                if at + n > seq:
                    self._pending = n
                    break
                ids[b, at:at + n] = self._ids(n)
                pos[b, at:at + n] = torch.arange(n)
                labels[b, at:at + n] = ids[b, at:at + n]
                docs.append(n)
                at += n
            # The padded tail continues the last conversation's positions (pad joins it; no loss).
            if at < seq:
                pos[b, at:] = torch.arange(pos[b, at - 1] + 1, pos[b, at - 1] + 1 + seq - at)
        return {"input_ids": ids, "position_ids": pos, "labels": labels}, sum(docs), docs


def build_model(cfg: dict, device: torch.device, attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(hidden_size=cfg["hidden_size"], num_hidden_layers=cfg["num_hidden_layers"],
                         num_attention_heads=cfg["num_attention_heads"],
                         num_key_value_heads=cfg["num_key_value_heads"],
                         intermediate_size=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
                         max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         attn_implementation=attn, use_cache=False)  # training keeps no KV cache
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.train()


def flops_per_step(n_params: int, cfg: dict, docs: list[int]) -> float:
    attn = 6 * cfg["num_hidden_layers"] * cfg["hidden_size"] * sum(d * d for d in docs)
    return 6 * n_params * sum(docs) + attn


def matmul_ceiling(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    t = 0.0
    for i in range(13):  # 3 warm-up products, then 10 timed
        if i == 3:
            torch.cuda.synchronize()
            t = time.perf_counter()
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192 ** 3 / (time.perf_counter() - t)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_variant(v: Variant, cfg: dict, lengths: list[int], device: torch.device, steps: int, warmup: int,
                ceiling: float, log, lora: dict | None = None) -> dict:
    have = fastpath.available(device)
    use_flex = v.flex and v.doc_mask and have["flex_attention"]
    model = build_model(cfg, device, "sdpa")
    n_params = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    if v.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora:  # as the job's peft=lora: adapters first, then the fast paths (which keep them in the path)
        from peft import LoraConfig, get_peft_model
        if lora["frozen"] == "bf16":
            # The job's methods compute in bf16: DeepSpeed holds the module in bf16 and FSDP gathers it
            # in bf16. A frozen base needs no fp32 master copy, so it is held in bf16 here too.
            model.to(torch.bfloat16)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=lora["dropout"],
                                                 target_modules=list(LORA_TARGETS)))
        if lora["frozen"] == "bf16":
            for p in model.parameters():  # adapters train with fp32 weights under bf16 autocast
                if p.requires_grad:
                    p.data = p.data.float()
            for m in model.modules():  # autocast already multiplies in bf16: PEFT's fp32 cast of each
                if hasattr(m, "cast_input_dtype_enabled"):  # projection's input would only copy it
                    m.cast_input_dtype_enabled = False
    fastpath.optimize_model(model, packed=use_flex, fused_kernels=v.liger, compile=v.compile_layers)
    trained = [p for p in model.parameters() if p.requires_grad]
    if v.fused_adamw:
        opt = fastpath.make_optimizer(model, lr=1e-5, weight_decay=0.0)
    else:  # what transformers' Trainer builds by default
        opt = torch.optim.AdamW(trained, lr=1e-5, weight_decay=0.0)
    amp_dtype = torch.float16 if v.dtype == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=v.dtype == "fp16" and device.type == "cuda")
    data = Batches(lengths, cfg["vocab_size"], seed=1)
    def make_batch():
        if not v.packed:
            b, real, docs = data.padded(v.batch, cfg["seed_pad"])
        else:
            b, real, docs = data.packed(v.batch, cfg["seq"])
            if not v.doc_mask:  # positions run on across conversations: transformers sees one sequence
                b["position_ids"] = torch.arange(cfg["seq"]).expand(v.batch, -1).contiguous()
        return {k: t.to(device) for k, t in b.items()}, real, docs
    # A trainer's DataLoader prepares batches ahead in worker processes; building them here, before
    # the clock starts, keeps host-side generation and pageable copies out of the timing.
    prepared = [make_batch() for _ in range(warmup + steps)]
    def batch(step):
        b, real, docs = prepared[step]
        if v.packed and v.doc_mask:
            b = fastpath.packed_batch_kwargs(b["input_ids"], b["position_ids"], b["labels"])
        return b, real, docs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    real_tokens, flops, losses = 0, 0.0, []
    t0 = None
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            t0 = time.perf_counter()
        b, real, docs = batch(step)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=device.type == "cuda" or v.dtype == "bf16"):
            loss = model(**b).loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            real_tokens += real
            flops += flops_per_step(n_params, cfg, docs)
        losses.append(loss.detach())
    _sync(device)
    elapsed = time.perf_counter() - t0
    row = {
        "variant": v.name + (lora_suffix(lora) if lora else ""), "batch": v.batch, "trainable": sum(p.numel() for p in trained), "rows": "pad %d" % cfg["seed_pad"] if not v.packed else "pack %d" % cfg["seq"],
        "real_tok_s": real_tokens / elapsed, "step_s": elapsed / steps,
        "mfu": flops / elapsed / ceiling if ceiling else float("nan"),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan"),
        "loss": float(torch.stack(losses[-steps:]).float().mean()),
    }
    log(json.dumps(row))
    del model, opt, trained
    # Each variant compiles afresh: otherwise dynamo reuses the previous variant's graphs and, having
    # seen a second batch size, recompiles them with a dynamic batch dimension.
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def lora_suffix(lora: dict) -> str:
    return f"+lora-d{lora['dropout']:g}" + ("-fp32base" if lora["frozen"] == "fp32" else "")


def per_token_losses(model, kwargs: dict) -> torch.Tensor:
    """Loss of each predicted token (targets are the next input ids), flattened."""
    ids = kwargs["input_ids"]
    out = model(**{k: t for k, t in kwargs.items() if k != "labels"})
    logits = out.logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")


@torch.no_grad()
def check_packing(cfg: dict, lengths: list[int], device: torch.device, log, flex: bool = True) -> dict:
    """Per-token loss of a packed row with document masking against each conversation alone."""
    model = build_model(cfg, device, "sdpa").eval()
    data = Batches(lengths, cfg["vocab_size"], seed=7)
    packed, _, docs = data.packed(1, cfg["seq"])
    packed = {k: t.to(device) for k, t in packed.items()}
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    alone = []
    with amp:
        at = 0
        for n in docs:
            alone.append(per_token_losses(model, {"input_ids": packed["input_ids"][:, at:at + n]}))
            at += n
    alone = torch.cat(alone)
    def packed_losses(kwargs):
        with amp:
            full = per_token_losses(model, kwargs)
        keep, at = [], 0
        for n in docs:  # targets inside each conversation only
            keep.append(full[at:at + n - 1])
            at += n
        return torch.cat(keep)
    if flex:
        fastpath.use_document_attention(model)
        kw = {"input_ids": packed["input_ids"], "position_ids": packed["position_ids"],
              "doc_block_mask": fastpath.document_block_mask(packed["position_ids"])}
    else:
        kw = fastpath.packed_batch_kwargs(packed["input_ids"], packed["position_ids"])
    masked = packed_losses(kw)
    leaky = packed_losses({"input_ids": packed["input_ids"],
                           "position_ids": torch.arange(cfg["seq"], device=device)[None]})
    res = {"docs": len(docs), "tokens": int(alone.numel()), "mean_loss": float(alone.mean()),
           "masked_max_abs": float((masked - alone).abs().max()),
           "masked_mean_abs": float((masked - alone).abs().mean()),
           "nomask_max_abs": float((leaky - alone).abs().max()),
           "nomask_mean_abs": float((leaky - alone).abs().mean())}
    log("packing check " + json.dumps(res))
    return res


def format_table(rows: list[dict], seed_tok_s: float | None) -> str:
    lines = [f"{'variant':32} {'rows':>9} {'batch':>5} {'real_tok/s':>11} {'x_seed':>7} {'MFU':>6} {'peak_GiB':>8} "
             f"{'step_s':>7}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['variant']:32} {'':>9} {r.get('batch', ''):>5} {'failed: ' + r['error'][:60]}")
            continue
        x = r["real_tok_s"] / seed_tok_s if seed_tok_s else float("nan")
        lines.append(f"{r['variant']:32} {r['rows']:>9} {r['batch']:>5} {r['real_tok_s']:>11,.0f} {x:>7.1f} "
                     f"{r['mfu']:>6.1%} {r['peak_gib']:>8.1f} {r['step_s']:>7.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default=None,
                    help="model shape (default: tinyllama on a GPU, tiny on the CPU)")
    ap.add_argument("--tiny", action="store_true", help="same as --config tiny")
    ap.add_argument("--variants", default=None, help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    ap.add_argument("--seed-steps", type=int, default=None, help="timed steps for the seed recipe")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--ceiling", type=float, default=788e12, help="FLOP/s the MFU is measured against")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-check", action="store_true", help="skip the packed-vs-unpacked loss check")
    ap.add_argument("--log", type=Path, default=None, help="append JSON rows here too")
    ap.add_argument("--peft", choices=("none", "lora"), default="none",
                    help="lora: run each variant again with LoRA r=16 on all projections (row NAME+lora-dD)")
    ap.add_argument("--lora-dropout", default="0.05",
                    help="comma-separated LoRA dropouts, one LoRA row each (with --peft lora)")
    ap.add_argument("--lora-base", choices=("bf16", "fp32"), default="bf16",
                    help="dtype the frozen base is held in (bf16: as the job's DeepSpeed and FSDP compute)")
    ap.add_argument("--lora-only", action="store_true", help="skip the full fine-tune rows")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = "tiny" if args.tiny else (args.config or ("tinyllama" if device.type == "cuda" else "tiny"))
    cfg = CONFIGS[config]
    names = args.variants.split(",") if args.variants else (DEFAULT_GPU if device.type == "cuda" else DEFAULT_CPU)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    gpu = device.type == "cuda"
    steps, seed_steps = args.steps or (20 if gpu else 2), args.seed_steps or (40 if gpu else 2)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    logf = args.log.open("a", buffering=1) if args.log else None  # line-buffered: rows land as they come
    def log(msg: str):
        print(msg, flush=True)
        if logf:
            logf.write(msg + "\n")
    lengths = load_lengths(cfg["length_scale"], cfg["seq"])
    log(f"device {torch.cuda.get_device_name(device) if gpu else 'cpu'}, torch {torch.__version__}, "
        f"config {config}, mean length {sum(lengths) / len(lengths):.1f}, fast paths {fastpath.available(device)}")
    measured = matmul_ceiling(device)
    if measured:
        log(f"bf16 matmul 8192^3 measured {measured / 1e12:.0f} TFLOP/s; MFU below is against {args.ceiling / 1e12:.0f}")
    ceiling = args.ceiling if gpu else None
    if not args.no_check:
        check_packing(cfg, lengths, device, log)
    rows = []
    setups: list[dict | None] = [] if args.lora_only else [None]
    if args.peft == "lora":
        setups += [{"dropout": float(d), "frozen": args.lora_base} for d in args.lora_dropout.split(",")]
    for v, lora in [(VARIANTS[n], lora) for n in names for lora in setups]:
        try:
            rows.append(run_variant(v, cfg, lengths, device, seed_steps if v.name == "seed" else steps,
                                    1 if v.name == "seed" else warmup, ceiling, log, lora=lora))
        except Exception as e:  # one broken lever (or too big a batch) must not hide the other rows
            err = "out of memory" if isinstance(e, torch.OutOfMemoryError) else f"{type(e).__name__}: {e}"
            rows.append({"variant": v.name + (lora_suffix(lora) if lora else ""), "batch": v.batch, "error": err})
            log(f"{v.name}: {type(e).__name__}: {e}")
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
    seed = next((r["real_tok_s"] for r in rows if r["variant"] == "seed" and "error" not in r), None)
    log("\n" + format_table(rows, seed))
    if logf:
        logf.close()
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
