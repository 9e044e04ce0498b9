"""Checkpoints in SageMaker's checkpoint folder: saved every save_steps, one kept, resumed from
after a restart (a spot interruption)."""
from __future__ import annotations

import shutil
from pathlib import Path

from .batches import log
from .environment import Rank


def resume(backend, ckpt_dir: Path, rank: Rank) -> dict | None:
    """The saved state of the latest checkpoint in ``ckpt_dir`` (with ``step``), loaded into the backend."""
    state = backend.load_checkpoint(ckpt_dir) if _has_checkpoint(ckpt_dir) else None
    if state and rank.is_main:
        log(f"[train] resumed from {ckpt_dir} at step {int(state.get('step', 0))}")
    return state


def checkpoint_tag(step: int) -> str:
    return f"step-{step}"


def save_checkpoint(backend, ckpt_dir: Path, step: int, rank: Rank) -> None:
    """Save, then keep only this checkpoint: SageMaker syncs the folder to S3, and one full
    optimizer state is all a restart needs."""
    import torch.distributed as dist

    tag = checkpoint_tag(step)
    backend.save_checkpoint(ckpt_dir, tag, {"step": step})
    dist.barrier()
    if rank.is_main:
        for old in ckpt_dir.glob("step-*"):
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def _has_checkpoint(ckpt_dir: Path) -> bool:
    return (ckpt_dir / "latest").is_file()
