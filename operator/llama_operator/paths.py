"""Where the product's non-Python parts live. The package is installed from the checkout
(`pip install -e .`), and the operator image copies `workloads/` to the same place beside it.
`data/` (datasets for the demo, tests and benchmarks) is in the checkout only; the image needs none."""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]


def workloads_dir() -> Path:
    """The `workloads/` folder: what runs inside SageMaker (it is uploaded as the job's source)."""
    return Path(os.environ.get("LLAMA_OPERATOR_WORKLOADS_DIR", REPO_ROOT / "workloads")).resolve()


def crds_dir() -> Path:
    return Path(os.environ.get("LLAMA_OPERATOR_CRDS_DIR", REPO_ROOT / "crds")).resolve()


def manifests_dir() -> Path:
    return Path(os.environ.get("LLAMA_OPERATOR_MANIFESTS_DIR", REPO_ROOT / "manifests")).resolve()


def dailydialog_zip() -> Path:
    """The repository's copy of the DailyDialog archive (data/dailydialog/README.md says what it is)."""
    return (REPO_ROOT / "data" / "dailydialog" / "daily-dialog.txt.zip").resolve()


_LOAD_LOCK = threading.Lock()


def load_workload(relative: str) -> ModuleType:
    """A self-contained module of workloads/ (e.g. "serve/lmi.py"), loaded from its file: workloads/
    is shipped beside the package, not inside it (it runs in SageMaker's images). Handlers load from
    worker threads: one loads the file while the others wait, and the module is published only once
    it has run, so no thread sees it half-initialised."""
    path = workloads_dir() / relative
    name = "_llama_operator_workloads_" + relative.removesuffix(".py").replace("/", "_")
    with _LOAD_LOCK:
        cached = sys.modules.get(name)
        if cached is not None and getattr(cached, "__file__", None) == str(path):
            return cached
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the workloads ship with the operator "
                                    f"(set LLAMA_OPERATOR_WORKLOADS_DIR to the folder holding {relative})")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
        return module
