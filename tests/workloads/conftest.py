"""Fixtures for the training workloads: a tiny Llama base model, a DailyDialog subset as chat
JSONL, moto's S3 server, and a runner that starts train_entry.py under torchrun (2 processes)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from llama_operator.paths import workloads_dir

WORKLOADS = workloads_dir()
if str(WORKLOADS) not in sys.path:  # workloads/ ships as plain files, imported as top-level packages
    sys.path.insert(0, str(WORKLOADS))

LOSS_LINE = re.compile(r"^\[train\] step=(\d+)/(\d+) epoch=([0-9.]+) loss=([0-9.eE+-]+) lr=([0-9.eE+-]+) "
                       r"tokens_per_s=([0-9.]+) mfu=([0-9.]+)$", re.M)
DONE_LINE = re.compile(r"^\[train\] done steps=(\d+) train_loss=([0-9.]+) tokens_per_s=([0-9.]+) runtime_s=([0-9.]+)$", re.M)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from llama_operator.local.demo.tinymodel import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("base") / "tiny-llama", tokenizer_rows=1000)


@pytest.fixture(scope="session")
def tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base)


@pytest.fixture(scope="session")
def dailydialog_path() -> Path:
    from llama_operator.local.demo.tinymodel import dailydialog_dir

    return dailydialog_dir()


@pytest.fixture(scope="session")
def chat_channels(tmp_path_factory, dailydialog_path) -> dict[str, Path]:
    """train (400 conversations) and validation (40) channels holding raw chat JSONL, so the job
    prepares its own data."""
    import datasets

    from prepare.sources import dailydialog_messages

    root = tmp_path_factory.mktemp("channels")
    dd = datasets.load_from_disk(str(dailydialog_path))
    out = {}
    for name, split, n in (("train", "train", 400), ("validation", "test", 40)):
        d = root / name
        d.mkdir()
        with open(d / "chat.jsonl", "w") as fh:
            for row in dd[split].select(range(n)):
                msgs = [{"role": m["role"], "content": m["content"]}
                        for m in dailydialog_messages(row["convo"], row["response"])]
                fh.write(json.dumps({"messages": msgs}) + "\n")
        out[name] = d
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@dataclass
class JobResult:
    rc: int
    output: str
    model_dir: Path
    output_dir: Path

    @property
    def losses(self) -> list[float]:
        return [float(m.group(4)) for m in LOSS_LINE.finditer(self.output)]

    @property
    def failure(self) -> str | None:
        f = self.output_dir / "failure"
        return f.read_text() if f.exists() else None


# The interpreter the job runs under: this one, or an image profile's environment
# (`llama-operator image-envs` prints where each is) to check the workloads against an image.
WORKLOAD_PYTHON = os.environ.get("LLAMA_OPERATOR_WORKLOAD_PYTHON") or sys.executable


def job_env(tmp: Path, channels: dict[str, Path], extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "PYTEST_"))}
    env.update({"SM_MODEL_DIR": str(tmp / "model"), "SM_OUTPUT_DIR": str(tmp / "output"),
                "SM_OUTPUT_DATA_DIR": str(tmp / "output" / "data"), "OMP_NUM_THREADS": "1",
                "SAGEMAKER_BASE_DIR": str(tmp / "opt-ml"), "PYTHONWARNINGS": "ignore"})
    for name, path in channels.items():
        env[f"SM_CHANNEL_{name.upper()}"] = str(path)
    env.update(extra or {})
    return env


def run_job(tmp: Path, hps: dict, channels: dict[str, Path], *, nproc: int = 2, extra_env: dict | None = None,
            timeout: int = 240) -> JobResult:
    """train_entry.py as SageMaker's toolkit runs it: torchrun, --name value arguments."""
    args = [a for k, v in hps.items() for a in (f"--{k}", str(v))]
    cmd = [WORKLOAD_PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKLOADS / "train_entry.py"), *args]
    proc = subprocess.run(cmd, cwd=tmp, env=job_env(tmp, channels, extra_env), capture_output=True,
                          text=True, timeout=timeout)
    return JobResult(proc.returncode, proc.stdout + proc.stderr, tmp / "model", tmp / "output")


def short_run_hps(base_model, tmp: Path, **overrides) -> dict:
    hps = {"base_model": base_model, "max_steps": 30, "learning_rate": 3e-3, "warmup_ratio": 0.1,
           "per_device_batch_size": 2, "max_seq_length": 256, "logging_steps": 5,
           "checkpoint_dir": tmp / "checkpoints", "seed": 7}
    hps.update(overrides)
    return hps


@pytest.fixture(scope="session")
def prepared_channels(tmp_path_factory, chat_channels, tiny_base) -> dict[str, Path]:
    """The same conversations already in the training format (as `python -m prepare` writes it)."""
    from transformers import AutoTokenizer

    from prepare.writer import prepare_to_jsonl

    tok = AutoTokenizer.from_pretrained(tiny_base)
    root = tmp_path_factory.mktemp("prepared")
    out = {}
    for name, src in chat_channels.items():
        prepare_to_jsonl(tok, src, root / name / "rows.jsonl", data_format="chat_jsonl")
        out[name] = root / name
    return out
