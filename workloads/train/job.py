"""Everything after validation: distributed setup, base model, data, the job's own loop (method
deepspeed; method smp trains through train/hf_trainer.py where transformers allows, else this loop
too), logging; the final save and push are train/outputs.py's."""
from __future__ import annotations

import datetime
import os
import time
import warnings
from pathlib import Path

import torch

from . import data as D
from . import peft_setup
from .compat import dtype_kwargs
from .environment import JobPaths, Rank
from .outputs import PROBE_ENV, node_scratch, probe_logits, save_and_push
from .s3sync import download_prefix, is_s3_uri
from .schedule import total_steps as count_steps
from .batches import LossMeter, batch_kwargs, flops_per_token, log, micro_batches, peak_flops
from .checkpoints import resume, save_checkpoint


# DeepSpeed still calls collectives that torch 2.13 renamed; one warning per call floods the log.
warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use `torch\.distributed\.")


def init_distributed(device: torch.device) -> None:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29555")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    backend = "nccl" if device.type == "cuda" else "gloo"
    # a long timeout: other ranks wait in a barrier while local rank 0 downloads the base model
    timeout = datetime.timedelta(minutes=60)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout,
                                device_id=device if device.type == "cuda" else None)


def fetch_base_model(hp, rank: Rank) -> Path:
    """Local rank 0 of each node pulls an S3 base model with s5cmd; the others wait."""
    import torch.distributed as dist

    if not is_s3_uri(hp.base_model):
        return Path(hp.base_model)
    dest = node_scratch("base-model")
    if rank.is_local_main and not (dest / "config.json").is_file():
        t0 = time.time()
        download_prefix(hp.base_model, dest)
        log(f"[train] base model pulled in {time.time() - t0:.1f}s")
    dist.barrier()
    if not (dest / "config.json").is_file():
        raise FileNotFoundError(f"no config.json under base_model {hp.base_model}")
    return dest


def load_rows(hp, channel: Path, tokenizer, rank: Rank, name: str) -> list[dict]:
    """Prepared rows from a channel; raw data is prepared once per node by local rank 0."""
    import torch.distributed as dist

    from prepare.sources import detect_format, iter_prepared
    from prepare.writer import prepare_to_jsonl

    fmt = detect_format(channel) if hp.data_format == "auto" else hp.data_format
    if fmt == "prepared":
        source = channel
    else:
        source = node_scratch(f"prepared-{name}.jsonl")
        split = "train" if name == "train" else "test"
        if rank.is_local_main:
            stats = prepare_to_jsonl(tokenizer, channel, source, data_format=fmt, split=split,
                                     max_length=hp.max_seq_length)
            if rank.is_main:
                log(f"[train] prepared {name}: {stats['rows']} conversations, {stats['tokens']} tokens")
        dist.barrier()
    return D.truncate(iter_prepared(source), hp.max_seq_length)


def load_model(hp, model_dir: Path, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .tokens import add_tokens, ensure_pad_token

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    attn = "eager" if hp.attn_implementation == "eager" else "sdpa"
    qlora = hp.peft == "qlora"
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn,
                                                 **dtype_kwargs(torch.bfloat16 if qlora else torch.float32),
                                                 **peft_setup.quantized_load_kwargs(hp, device))
    added = add_tokens(model, tokenizer, hp.add_special_tokens, hp.new_token_init, seed=hp.seed)
    pad_id = ensure_pad_token(tokenizer)
    model.config.use_cache = False
    if hp.gradient_checkpointing and not qlora:  # qlora: prepare_model_for_kbit_training turns it on
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not qlora:  # bitsandbytes placed the 4-bit weights on this rank's GPU already
        model.to(device)
    if peft_setup.enabled(hp):
        torch.manual_seed(hp.seed)  # the same initial adapters on every rank (FSDP keeps each rank's shard)
        model = peft_setup.wrap(model, hp, tokenizer)
    if device.type == "cuda" and hp.attn_implementation in ("auto", "flex_attention"):
        try:
            from . import fastpath

            model = fastpath.optimize_model(model, packed=hp.packing, **fast_path_options(hp))
        except ImportError:
            pass
    return model, tokenizer, pad_id, added


def fast_path_options(hp) -> dict:
    """Fused kernels and compilation for the CUDA fast path, as far as the method allows.

    ZeRO-3 gathers each weight in its module's forward hook; the fused linear + cross-entropy reads
    lm_head's weight outside that forward, where it is an empty shard, and compiled layers would
    break their graphs at every hook. Activation checkpointing re-runs layers outside the compiled
    region, so `auto` leaves compilation off with it too."""
    zero3 = hp.method == "deepspeed" and hp.zero_stage == 3
    if hp.torch_compile == "auto":
        compile_: bool | str = not (zero3 or hp.gradient_checkpointing)
    elif hp.torch_compile == "off":
        compile_ = False
    elif hp.torch_compile == "on":
        compile_ = True
    else:
        compile_ = hp.torch_compile
    return {"fused_kernels": not zero3, "compile": compile_}


def run(hp, paths: JobPaths, rank: Rank) -> None:
    import torch.distributed as dist

    t_start = time.time()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if hp.method == "deepspeed":
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo",
                                   timeout=datetime.timedelta(minutes=60))
    else:
        init_distributed(device)
    torch.manual_seed(hp.seed)
    if hp.precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise RuntimeError("precision=bf16 needs a GPU with bf16 support; set precision to fp16")

    model_dir = fetch_base_model(hp, rank)
    zero3_init = None
    if hp.method == "deepspeed" and hp.zero_stage == 3:
        # Kept alive while loading: from_pretrained then builds the model already partitioned
        # (deepspeed.zero.Init), so no rank ever holds the whole model.
        from transformers.integrations import HfDeepSpeedConfig

        from .backends import deepspeed_config

        zero3_init = HfDeepSpeedConfig(deepspeed_config(hp, total_steps=1, world_size=rank.world_size, cuda=cuda))
    model, tokenizer, pad_id, added = load_model(hp, model_dir, device)
    trainable = peft_setup.trainable_parameters(model)
    if rank.is_main and added:
        log(f"[train] added {added} special tokens ({hp.new_token_init} init)")
    if rank.is_main and peft_setup.enabled(hp):
        log(f"[train] peft={hp.peft} r={hp.lora_r} alpha={hp.lora_alpha} targets={','.join(hp.lora_target_modules)} "
            f"trainable_parameters={trainable}")

    rows = load_rows(hp, paths.train, tokenizer, rank, "train")
    val_rows = load_rows(hp, paths.validation, tokenizer, rank, "validation") if paths.validation else []
    layout = D.pack if hp.packing else (lambda rs, _n: D.unpacked(rs))
    train_rows = D.shard(layout(rows, hp.max_seq_length), rank.rank, rank.world_size)
    val_rows = D.shard(layout(val_rows, hp.max_seq_length), rank.rank, rank.world_size)
    if len(train_rows) < hp.per_device_batch_size:
        raise ValueError(f"train channel has too little data: {len(train_rows)} rows per process, "
                         f"fewer than per_device_batch_size={hp.per_device_batch_size}")
    micro_per_epoch = len(train_rows) // hp.per_device_batch_size
    total = count_steps(micro_per_epoch, hp.gradient_accumulation_steps, hp.epochs, hp.max_steps)
    mean_ctx = sum(len(r["input_ids"]) ** 2 for r in rows) / max(1, sum(len(r["input_ids"]) for r in rows)) / 2
    meter = LossMeter(hp, rank, device, total=total, micro_per_epoch=micro_per_epoch,
                      flops_per_token=flops_per_token(model.config, mean_ctx),
                      peak=peak_flops(device) * rank.world_size)
    if rank.is_main:
        log(f"[train] method={hp.method}{' zero_stage=' + str(hp.zero_stage) if hp.method == 'deepspeed' else ''} "
            f"world_size={rank.world_size} device={device.type} conversations={len(rows)} "
            f"rows_per_rank={len(train_rows)} packing={hp.packing} steps={total}")

    ckpt_dir = Path(hp.checkpoint_dir) if hp.checkpoint_dir else paths.checkpoints_dir
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    # packed rows are nearly full anyway; one width on CUDA keeps compiled attention from recompiling
    pad_to = hp.max_seq_length if (cuda and hp.packing) else None
    if hp.method == "deepspeed":
        from .backends import DeepSpeedBackend

        backend = DeepSpeedBackend(model, hp, total_steps=total, world_size=rank.world_size, device=device)
        del zero3_init
        step, first_step, runtime = train_loop(backend, hp, train_rows, pad_id, device, pad_to, meter, ckpt_dir,
                                               rank)
    else:
        from .hf_trainer import train_with_trainer, trainer_takes_sharded_model

        if hp.smp_loop == "trainer" or (hp.smp_loop == "auto" and trainer_takes_sharded_model(model)):
            backend, step, first_step, runtime = train_with_trainer(model, hp, train_rows, pad_id, device, pad_to,
                                                                    meter, ckpt_dir, rank)
        else:
            from .backends import FsdpBackend

            if rank.is_main:
                why = ("smp_loop=own" if hp.smp_loop == "own" else
                       f"transformers {transformers_version()} cannot take a model sharded before its Trainer (5.19 can)")
                log(f"[train] method smp runs the job's own loop: {why}")
            backend = FsdpBackend(model, hp, total_steps=total, world_size=rank.world_size, device=device)
            step, first_step, runtime = train_loop(backend, hp, train_rows, pad_id, device, pad_to, meter,
                                                   ckpt_dir, rank)

    eval_loss = evaluate(backend, val_rows, hp, pad_id, device, pad_to) if val_rows else None
    losses = meter.losses
    tps = meter.total_tokens / max(runtime, 1e-9)
    summary = {
        "method": hp.method, "zero_stage": hp.zero_stage if hp.method == "deepspeed" else None,
        "steps": step, "resumed_from_step": first_step or None, "world_size": rank.world_size,
        "train_loss": sum(losses) / len(losses) if losses else None,
        "first_logged_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "eval_loss": eval_loss, "tokens_per_s": tps, "mfu": tps * meter.fpt / meter.peak,
        "runtime_s": runtime, "total_runtime_s": time.time() - t_start,
        "packing": hp.packing, "precision": hp.precision, "added_special_tokens": list(hp.add_special_tokens),
        "peft": hp.peft, "trainable_parameters": trainable,
    }
    if os.environ.get(PROBE_ENV):
        probe_logits(backend, Path(os.environ[PROBE_ENV]), rank, device)
    save_and_push(backend, tokenizer, hp, paths, rank, summary, model_dir)
    if rank.is_main:
        log(f"[train] done steps={step} train_loss={summary['train_loss'] if losses else float('nan'):.4f} "
            f"tokens_per_s={tps:.1f} runtime_s={runtime:.1f}")
    _leave_the_group(dist, rank)


def _leave_the_group(dist, rank: Rank) -> None:
    """The last barrier and teardown. Everything is saved and pushed by now, so a peer that
    tears down first (gloo then reads a reset connection) does not fail the job."""
    try:
        dist.barrier()
        dist.destroy_process_group()
    except RuntimeError as exc:
        log(f"[train] rank {rank.rank}: ignoring an error while leaving the process group after the "
            f"job finished: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def train_loop(backend, hp, train_rows, pad_id, device, pad_to, meter: LossMeter, ckpt_dir: Path,
               rank: Rank) -> tuple[int, int, float]:
    """The job's own loop (method deepspeed; smp where the Trainer cannot run it) -> (final step,
    step it resumed from, seconds)."""
    state = resume(backend, ckpt_dir, rank)
    step = int(state.get("step", 0)) if state else 0
    stream = micro_batches(train_rows, hp)
    for _ in range(step * hp.gradient_accumulation_steps):  # replay the data order up to the checkpoint
        next(stream)
    backend.train()
    first_step = step
    t_loop = time.time()
    meter.restart_clock()
    while step < meter.total:
        _, examples = next(stream)
        batch = batch_kwargs(D.collate(examples, pad_id, pad_to), device)
        meter.add(backend.forward_backward(batch), D.real_tokens(examples))
        if not backend.step():
            continue
        step += 1
        meter.end_step(step, backend.lr())
        if hp.save_steps and step % hp.save_steps == 0 and step < meter.total:
            save_checkpoint(backend, ckpt_dir, step, rank)
    runtime = time.time() - t_loop
    if step > first_step:
        save_checkpoint(backend, ckpt_dir, step, rank)
    return step, first_step, runtime


def evaluate(backend, rows, hp, pad_id, device, pad_to=None) -> float:
    import torch.distributed as dist

    backend.train(False)
    acc = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(rows), hp.per_device_batch_size):
            batch = batch_kwargs(D.collate(rows[i:i + hp.per_device_batch_size], pad_id, pad_to), device)
            acc += torch.tensor([float(backend.forward(batch)), 1.0], dtype=torch.float64)
    acc = acc.to(device)
    dist.all_reduce(acc)
    acc = acc.cpu()
    backend.train(True)
    return float(acc[0] / acc[1]) if acc[1] else float("nan")
