"""Fixtures for the serving workload: a tiny Llama on disk and an engine over it (CPU)."""

import sys
from pathlib import Path

import pytest

from llama_operator.paths import workloads_dir

SERVE_DIR = workloads_dir() / "serve"
# The workload's modules import each other by plain name, as they do inside the container.
sys.path.insert(0, str(SERVE_DIR))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from llama_operator.local.demo.tinymodel import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from model_source import ServeSettings, load_engine

    eng = load_engine(ServeSettings(model_dir=tiny_model_dir, max_batch_size=32, max_wait_ms=50), device="cpu")
    yield eng
    eng.close()
