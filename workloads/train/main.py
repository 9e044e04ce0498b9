"""The training job: validate hyperparameters, fetch the base model, prepare data, train, save
and push. Run by ``train_entry.py`` under torchrun (one process per GPU, or per CPU test rank)."""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

from .environment import job_paths, rank_from_env, write_failure
from .hparams import HyperparameterError, raw_hyperparameters, validate


def log(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str]) -> int:
    paths = job_paths()
    rank = rank_from_env()
    try:
        hp, unknown = validate(raw_hyperparameters(argv))
        if paths.train is None or not paths.train.exists():
            raise HyperparameterError("train channel", "missing",
                                      "give the job a 'train' input channel (SM_CHANNEL_TRAIN)")
        if not hp.base_model.startswith("s3://") and not Path(hp.base_model).is_dir():
            raise HyperparameterError("base_model", hp.base_model,
                                      "must be an s3://bucket/prefix/ or an existing local model directory")
        if hp.peft == "qlora":  # imports torch, so only for qlora: other jobs keep failing fast
            from .peft_setup import check_qlora_device

            check_qlora_device()
    except HyperparameterError as e:
        line = str(e)
        print(line, file=sys.stderr, flush=True)
        if rank.is_local_main:
            write_failure(paths, line)
        return 2
    if rank.is_main and unknown:
        log(f"[train] ignoring unknown hyperparameters: {', '.join(unknown)}")
    try:
        from .job import run

        run(hp, paths, rank)
        return 0
    except Exception as e:  # the job fails with one readable reason; the trace goes to the log
        traceback.print_exc()
        line = f"training failed on rank {rank.rank}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(line, file=sys.stderr, flush=True)
        write_failure(paths, line[:1000])
        return 1
