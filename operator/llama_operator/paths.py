"""Where the product's non-Python parts live. The package is installed from the checkout
(`pip install -e .`), and the operator image copies `workloads/` to the same place beside it."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def workloads_dir() -> Path:
    """The `workloads/` folder: what runs inside SageMaker (it is uploaded as the job's source)."""
    return Path(os.environ.get("LLAMA_OPERATOR_WORKLOADS_DIR", REPO_ROOT / "workloads")).resolve()


def crds_dir() -> Path:
    return Path(os.environ.get("LLAMA_OPERATOR_CRDS_DIR", REPO_ROOT / "crds")).resolve()


def manifests_dir() -> Path:
    return Path(os.environ.get("LLAMA_OPERATOR_MANIFESTS_DIR", REPO_ROOT / "manifests")).resolve()
