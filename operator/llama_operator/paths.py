"""Where the product's non-Python parts live. The package is installed from the checkout
(`pip install -e .`), and the operator image copies `workloads/` to the same place beside it.
`data/` (datasets for the demo, tests and benchmarks) is in the checkout only; the image needs none."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def workloads_dir() -> Path:
    """The `workloads/` folder: what runs inside SageMaker (it is uploaded as the job's source)."""
    return Path(os.environ.get("LLAMA_OPERATOR_WORKLOADS_DIR", REPO_ROOT / "workloads")).resolve()


def serving_defaults() -> dict[str, dict[str, Any]]:
    """workloads/serve/defaults.json's knobs: for each serving knob (by its LlamaEndpoint spec
    field), its serving.properties key, the engines it applies to, its default and bounds. The
    serving files shipped into SageMaker read the same table beside them."""
    return _serving_table(workloads_dir() / "serve" / "defaults.json")["knobs"]


@functools.lru_cache(maxsize=4)
def _serving_table(path: Path) -> dict:
    return json.loads(path.read_text())


def adapter_knob(name: str) -> dict[str, Any]:
    """defaults.json's `adapterKnobs` entry (maxLoras, maxLoraRank): default and bounds."""
    return _serving_table(workloads_dir() / "serve" / "defaults.json")["adapterKnobs"][name]


def serving_default(spec_field: str, engine: str) -> Any:
    """What an absent spec.serving.<spec_field> means with this engine (None: the model's own)."""
    default = serving_defaults()[spec_field]["default"]
    return default[engine] if isinstance(default, dict) else default


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
