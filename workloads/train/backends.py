"""The two distributed methods. Both offer

    backend.train(mode); backend.forward(batch) -> loss; backend.module
    backend.save_checkpoint(dir, tag, state); backend.load_checkpoint(dir) -> state
    backend.full_state_dict() -> {name: tensor} on global rank 0 (16-bit when training in 16 bit)

``deepspeed``: ZeRO 1/2/3 from a generated config, stepped by the job's own loop
(``forward_backward``, ``step``, ``lr``). ``smp``: SageMaker model parallelism v2
(``torch.sagemaker.transform``) when importable, then PyTorch FSDP2 (``fully_shard``), stepped by the
Hugging Face Trainer (train/hf_trainer.py); outside SMP images the FSDP part alone runs."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .schedule import make_scheduler

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def deepspeed_config(hp, *, total_steps: int, world_size: int, cuda: bool) -> dict:
    """DeepSpeed config from hyperparameters. The optimizer is DeepSpeed's wrapper around
    torch.optim.AdamW (``torch_adam``), which needs no compiled ops on any machine."""
    cfg: dict = {
        "train_micro_batch_size_per_gpu": hp.per_device_batch_size,
        "gradient_accumulation_steps": hp.gradient_accumulation_steps,
        "train_batch_size": hp.per_device_batch_size * hp.gradient_accumulation_steps * world_size,
        "gradient_clipping": 1.0,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
        "optimizer": {"type": "AdamW", "params": {
            "lr": hp.learning_rate, "betas": [0.9, 0.95], "eps": 1e-8,
            "weight_decay": hp.weight_decay, "torch_adam": True, "adam_w_mode": True}},
        "zero_optimization": {"stage": hp.zero_stage, "overlap_comm": cuda,
                              "contiguous_gradients": True, "reduce_bucket_size": 5e8},
        "bf16": {"enabled": hp.precision == "bf16"},
        "fp16": {"enabled": hp.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
    }
    if hp.zero_stage == 3:
        cfg["zero_optimization"].update({
            "stage3_gather_16bit_weights_on_model_save": True,
            "stage3_prefetch_bucket_size": 5e7, "stage3_param_persistence_threshold": 1e5})
    return cfg


class DeepSpeedBackend:
    def __init__(self, model, hp, *, total_steps: int, world_size: int, device: torch.device):
        import deepspeed

        self.hp = hp
        self.config = deepspeed_config(hp, total_steps=total_steps, world_size=world_size,
                                       cuda=device.type == "cuda")
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=self.config,
            lr_scheduler=lambda opt: make_scheduler(opt, total_steps, hp.warmup_ratio, hp.lr_scheduler))
        self.module = self.engine.module

    def train(self, mode: bool = True):
        self.engine.train(mode)

    def forward(self, batch):
        return self.engine(**batch).loss

    def forward_backward(self, batch):
        loss = self.engine(**batch).loss
        self.engine.backward(loss)
        return loss.detach()

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        return boundary

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    # With peft the frozen base is the base_model hyperparameter's, loaded afresh on restart: the
    # checkpoint keeps only the adapter (and its optimizer state), not a copy of the whole model.
    def save_checkpoint(self, ckpt_dir: Path, tag: str, state: dict) -> None:
        self.engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state,
                                    exclude_frozen_parameters=self.hp.peft != "none")

    def load_checkpoint(self, ckpt_dir: Path) -> dict | None:
        path, client = self.engine.load_checkpoint(str(ckpt_dir), load_module_strict=self.hp.peft == "none")
        return client if path is not None else None

    def full_state_dict(self, is_main: bool) -> dict | None:
        if self.hp.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            sd = self.engine.module.state_dict()
        return sd if is_main else None


class FsdpBackend:
    """The model of method ``smp``, sharded, with its optimizer and schedule. The Hugging Face Trainer
    (train/hf_trainer.py) runs the steps where transformers accepts a model sharded before it;
    otherwise the job's own loop does, through ``forward_backward`` / ``step``. This keeps what the
    Trainer cannot do for a model it did not shard itself: the per-rank checkpoint and the gathered
    full weights."""

    STATE = "fsdp_state.json"

    def __init__(self, model, hp, *, total_steps: int, world_size: int, device: torch.device):
        import torch.distributed as dist
        from .compat import fsdp2

        fully_shard, MixedPrecisionPolicy = fsdp2()

        self.hp = hp
        self.smp = _smp_transform(hp, world_size)
        # SMP's transform replaces the decoder's modules with its own, under the adapters PEFT put there
        if self.smp is not None and hp.peft == "none":
            model = self.smp(model)
        dtype = DTYPES[hp.precision]
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for layer in _decoder_layers(model):
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        self.module = model
        self.optimizer = _optimizer(model, hp, device)
        self.scheduler = make_scheduler(self.optimizer, total_steps, hp.warmup_ratio, hp.lr_scheduler)
        self.dist = dist
        self.micro = 0
        self.scaler = None  # the own loop's fp16 loss scaling (the Trainer brings its own)
        if hp.precision == "fp16":
            from torch.amp import GradScaler

            self.scaler = GradScaler(device.type)

    def train(self, mode: bool = True):
        self.module.train(mode)

    def forward(self, batch):
        return self.module(**batch).loss

    # The own loop (job.train_loop); checkpoints are taken at step boundaries, so `micro` restarts at 0.
    def forward_backward(self, batch):
        loss = self.module(**batch).loss
        scaled = loss / self.hp.gradient_accumulation_steps
        (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        self.micro += 1
        return loss.detach()

    def step(self) -> bool:
        if self.micro % self.hp.gradient_accumulation_steps:
            return False
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def _state(self):
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def save_checkpoint(self, ckpt_dir: Path, tag: str, state: dict) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._state(), checkpoint_id=str(ckpt_dir / tag))
        if self.dist.get_rank() == 0:
            extra = dict(state, scheduler=self.scheduler.state_dict())
            (ckpt_dir / tag / self.STATE).write_text(json.dumps(extra))
            (ckpt_dir / "latest").write_text(tag)
        self.dist.barrier()

    def load_checkpoint(self, ckpt_dir: Path) -> dict | None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        latest = ckpt_dir / "latest"
        if not latest.is_file():
            return None
        tag = latest.read_text().strip()
        sd = self._state()
        dcp.load(sd, checkpoint_id=str(ckpt_dir / tag))
        set_state_dict(self.module, self.optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        extra = json.loads((ckpt_dir / tag / self.STATE).read_text())
        self.scheduler.load_state_dict(extra.pop("scheduler"))
        return dict(extra, tag=tag)

    def full_state_dict(self, is_main: bool) -> dict | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not is_main:
            return None
        dtype = DTYPES[self.hp.precision]
        return {k: v.to(dtype) for k, v in sd.items()}


def _decoder_layers(model):
    from .peft_setup import base_model

    model = base_model(model)
    inner = getattr(model, "model", model)
    return list(getattr(inner, "layers", []))


def _optimizer(model, hp, device):
    if device.type == "cuda":
        try:
            from . import fastpath

            return fastpath.make_optimizer(model, hp.learning_rate, hp.weight_decay)
        except ImportError:
            pass
    # frozen parameters (the base under peft) get no optimizer state
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in trained if not (p.ndim >= 2 and "norm" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=hp.learning_rate, betas=(0.9, 0.95), eps=1e-8)


def _smp_transform(hp, world_size: int):
    """SMP v2, only inside SageMaker's SMP images: init with the shard/TP degrees, then transform."""
    try:
        import torch.sagemaker as tsm  # type: ignore
    except Exception:
        return None
    tsm.init({"hybrid_shard_degree": hp.smp_shard_degree or world_size,
              "tensor_parallel_degree": hp.smp_tp_degree})
    return tsm.transform
