"""Method ``smp`` through the Hugging Face Trainer.

Sharding is ours, not the Trainer's: accelerate enables the Trainer's FSDP (``fsdp=``/``fsdp_config``)
only on GPU-like devices; on a CPU under gloo it silently trains with DDP instead, so the tests would
run unsharded. ``FsdpBackend`` shards the model as the job always has (SMP v2 ``tsm.init`` /
``tsm.transform`` when ``torch.sagemaker`` imports, then FSDP2 ``fully_shard`` per decoder layer with
the precision's ``MixedPrecisionPolicy``) and the Trainer gets it marked as sharded at load time,
the flag transformers' own ``from_pretrained(distributed_config=...)`` sets: the Trainer then neither
wraps it in DDP nor shards it again, and accelerate only prepares the optimizer.

What the Trainer cannot do for a model it did not shard, ``FsdpBackend`` does: the per-rank
(torch.distributed.checkpoint) checkpoint, loaded before ``train(resume_from_checkpoint=...)``, and
the gathered 16-bit weights for ``job.save_and_push``. Data order, the log line and the checkpoint
layout (``step-N``, ``latest``) are the job's, shared with the deepspeed method."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from . import data as D
from .backends import FsdpBackend
from .environment import Rank
from .batches import LossMeter, batch_kwargs, micro_batches
from .checkpoints import checkpoint_tag, resume, save_checkpoint
from .peft_setup import base_model

REAL_TOKENS = "real_tokens"  # rides along in each batch for tokens_per_s; popped before the forward
TRAINER_STATE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME: where resume reads global_step


class MicroBatches(IterableDataset):
    """The job's endless micro-batch stream for this rank, started after ``skip`` micro-batches."""

    def __init__(self, rows, hp, pad_id: int, device: torch.device, pad_to: int | None, skip: int):
        self.rows, self.hp, self.pad_id, self.device, self.pad_to, self.skip = rows, hp, pad_id, device, pad_to, skip

    def __iter__(self):
        stream = micro_batches(self.rows, self.hp)
        for _ in range(self.skip):  # replay the data order up to the checkpoint
            next(stream)
        for _, examples in stream:
            batch = batch_kwargs(D.collate(examples, self.pad_id, self.pad_to), self.device)
            batch[REAL_TOKENS] = D.real_tokens(examples)
            yield batch


class JobTrainer(Trainer):
    def __init__(self, *args, stream: MicroBatches, meter: LossMeter, **kwargs):
        super().__init__(*args, **kwargs)
        self.stream, self.meter = stream, meter
        # loss = mean over each micro-batch's trained tokens, divided by the accumulation steps, as
        # the deepspeed method; with loss kwargs the Trainer would weight micro-batches by token count
        self.model_accepts_loss_kwargs = False

    def get_train_dataloader(self) -> DataLoader:
        # rows are already this rank's share (data.shard); accelerate's prepare would split them again
        return DataLoader(self.stream, batch_size=None, collate_fn=_as_is)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        tokens = inputs.pop(REAL_TOKENS, 0)
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.meter.add((out[0] if return_outputs else out).detach(), tokens)
        return out

    def _defer_fsdp_gradient_reduction(self):
        # The base class reads config.distributed_config, which only from_pretrained(distributed_config=)
        # sets. Reduce-scattering after every micro-batch keeps gradients sharded, as before the Trainer.
        return contextlib.nullcontext()

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        pass  # FsdpBackend.load_checkpoint restored model, optimizer and schedule before train()

    def _load_optimizer_and_scheduler(self, checkpoint):
        pass


class JobCallback(TrainerCallback):
    """The job's log line and checkpoints at the Trainer's optimizer steps (on every rank: both are
    collectives)."""

    def __init__(self, backend: FsdpBackend, hp, meter: LossMeter, ckpt_dir: Path, rank: Rank):
        self.backend, self.hp, self.meter, self.ckpt_dir, self.rank = backend, hp, meter, ckpt_dir, rank

    def on_train_begin(self, args, state, control, **kwargs):
        self.meter.restart_clock()

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        self.meter.end_step(step, float(self.backend.scheduler.get_last_lr()[0]))
        if self.hp.save_steps and step % self.hp.save_steps == 0 and step < self.meter.total:
            save_trainer_checkpoint(self.backend, state, self.ckpt_dir, self.rank)


def save_trainer_checkpoint(backend: FsdpBackend, state, ckpt_dir: Path, rank: Rank) -> None:
    """The job's checkpoint plus the Trainer's state, written first so that ``latest`` never names
    a checkpoint the Trainer cannot resume from."""
    if rank.is_main:
        (ckpt_dir / checkpoint_tag(state.global_step)).mkdir(parents=True, exist_ok=True)
        state.save_to_json(str(ckpt_dir / checkpoint_tag(state.global_step) / TRAINER_STATE))
    save_checkpoint(backend, ckpt_dir, state.global_step, rank)


def training_arguments(hp, total: int, ckpt_dir: Path, device: torch.device) -> TrainingArguments:
    return TrainingArguments(
        # without use_cpu, accelerate takes a CPU job for one process and the Trainer sees world_size 1
        use_cpu=device.type != "cuda", ddp_timeout=3600,
        output_dir=str(ckpt_dir), max_steps=total, per_device_train_batch_size=hp.per_device_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps, learning_rate=hp.learning_rate,
        weight_decay=hp.weight_decay, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
        seed=hp.seed,
        # bf16 (and fp32) precision is FSDP's MixedPrecisionPolicy alone; the Trainer's bf16 autocast
        # would cast a second time. fp16 needs the Trainer's loss scaling.
        bf16=False, fp16=hp.precision == "fp16",
        # gradient checkpointing is already on (job.load_model, non-reentrant)
        gradient_checkpointing=False,
        # the job logs, checkpoints and evaluates itself, in the formats the operator parses
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        # MicroBatches starts at the checkpoint's step; the Trainer must not skip again
        ignore_data_skip=True,
        remove_unused_columns=False, dataloader_num_workers=0, average_tokens_across_devices=False,
    )


def trainer_takes_sharded_model(model) -> bool:
    """Whether this transformers' Trainer accepts a model sharded before it (5.19 on); an older one
    would wrap the FSDP2 model in DDP. Under a PEFT wrapper, the transformers model beneath decides."""
    return hasattr(type(base_model(model)), "is_distributed_loading_by_transformers")


def make_trainer(backend: FsdpBackend, hp, stream: MicroBatches, meter: LossMeter, ckpt_dir: Path,
                 rank: Rank, device: torch.device) -> JobTrainer:
    model = backend.module
    if not trainer_takes_sharded_model(model):
        raise RuntimeError("smp_loop=trainer needs transformers 5.19 or newer, whose Trainer accepts a model "
                           "sharded before it; this one would wrap the FSDP2 model in DDP. Set smp_loop to "
                           "auto or own")
    # Tells the Trainer the model is sharded already: no DDP wrap, no second shard (see module docstring).
    # A PeftModel passes the attribute lookup on to the transformers model beneath, where it is set.
    base_model(model)._is_distributed_loading_by_transformers = True
    trainer = JobTrainer(model=model, args=training_arguments(hp, meter.total, ckpt_dir, device),
                         optimizers=(backend.optimizer, backend.scheduler), stream=stream, meter=meter,
                         callbacks=[JobCallback(backend, hp, meter, ckpt_dir, rank)])
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    return trainer


def train_with_trainer(model, hp, train_rows, pad_id: int, device: torch.device, pad_to: int | None,
                       meter: LossMeter, ckpt_dir: Path, rank: Rank) -> tuple[FsdpBackend, int, int, float]:
    """Shard, train to ``meter.total`` steps, checkpoint -> (backend, final step, step resumed from, seconds)."""
    import time

    backend = FsdpBackend(model, hp, total_steps=meter.total, world_size=rank.world_size, device=device)
    state = resume(backend, ckpt_dir, rank)
    first_step = int(state["step"]) if state else 0
    stream = MicroBatches(train_rows, hp, pad_id, device, pad_to, skip=first_step * hp.gradient_accumulation_steps)
    trainer = make_trainer(backend, hp, stream, meter, ckpt_dir, rank, device)
    t0 = time.time()
    if first_step < meter.total:
        trainer.train(resume_from_checkpoint=str(ckpt_dir / state["tag"]) if state else None)
    runtime = time.time() - t0
    step = trainer.state.global_step if first_step < meter.total else first_step
    if step > first_step:
        save_trainer_checkpoint(backend, trainer.state, ckpt_dir, rank)
    return backend, step, first_step, runtime


def _as_is(batch):
    return batch
