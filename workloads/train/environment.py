"""Where SageMaker's training toolkit puts things (SM_* variables, /opt/ml defaults) and which
process this is (torchrun's RANK/LOCAL_RANK/WORLD_SIZE)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class JobPaths:
    train: Path | None
    validation: Path | None
    model_dir: Path
    output_dir: Path
    output_data_dir: Path
    # SageMaker syncs /opt/ml/checkpoints with CheckpointConfig's S3 prefix; under a base dir (local
    # service, tests) each job gets its own, so one job never resumes from another's leftovers
    checkpoints_dir: Path = Path("/opt/ml/checkpoints")

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"


def job_paths(env=os.environ) -> JobPaths:
    base = Path(env.get("SAGEMAKER_BASE_DIR", "/opt/ml"))

    def channel(name: str) -> Path | None:
        var = env.get(f"SM_CHANNEL_{name.upper()}")
        if var:
            return Path(var)
        default = base / "input" / "data" / name
        return default if default.exists() else None

    output = Path(env.get("SM_OUTPUT_DIR", base / "output"))
    return JobPaths(train=channel("train"), validation=channel("validation"),
                    model_dir=Path(env.get("SM_MODEL_DIR", base / "model")), output_dir=output,
                    output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", output / "data")),
                    checkpoints_dir=base / "checkpoints")


@dataclass(frozen=True)
class Rank:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0


def rank_from_env(env=os.environ) -> Rank:
    world = int(env.get("WORLD_SIZE", "1"))
    return Rank(rank=int(env.get("RANK", "0")), local_rank=int(env.get("LOCAL_RANK", "0")),
                world_size=world, local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))))


def write_failure(paths: JobPaths, line: str) -> None:
    """SageMaker shows this file's content as the job's FailureReason. The first writer wins: when
    one rank fails, the others then fail on broken connections, which is not the reason."""
    try:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        with open(paths.failure_file, "x") as fh:
            fh.write(line + "\n")
    except OSError:
        pass
