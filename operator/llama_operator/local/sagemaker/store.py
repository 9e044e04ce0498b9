"""Objects kept as one JSON file each under the state directory, written atomically (write a
temporary file, fsync, rename) so a crash never leaves half an object."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

# kind -> folder under the state dir; each object lives at <folder>/<name>/<kind>.json
FOLDERS = {
    "training-job": "training-jobs",
    "model": "models",
    "endpoint-config": "endpoint-configs",
    "endpoint": "endpoints",
    "inference-component": "inference-components",  # components.py
    # Application Auto Scaling (autoscaling.py): one per endpoint variant, named "<endpoint>.<variant>",
    # or per inference component, named "ic_<component>"
    "scalable-target": "scalable-targets",     # the target and its policies
    "scaling-activities": "scaling-activities",
}


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = threading.RLock()
        self._objects: dict[str, dict[str, dict]] = {kind: {} for kind in FOLDERS}
        for kind, folder in FOLDERS.items():
            for path in sorted((self.root / folder).glob(f"*/{kind}.json")):
                record = json.loads(path.read_text())
                self._objects[kind][record["name"]] = record

    def dir(self, kind: str, name: str) -> Path:
        return self.root / FOLDERS[kind] / name

    def _path(self, kind: str, name: str) -> Path:
        return self.dir(kind, name) / f"{kind}.json"

    def get(self, kind: str, name: str) -> dict | None:
        with self.lock:
            return self._objects[kind].get(name)

    def all(self, kind: str) -> list[dict]:
        with self.lock:
            return list(self._objects[kind].values())

    def put(self, kind: str, record: dict) -> None:
        with self.lock:
            write_json_atomic(self._path(kind, record["name"]), record)
            self._objects[kind][record["name"]] = record

    def delete(self, kind: str, name: str) -> None:
        with self.lock:
            self._path(kind, name).unlink(missing_ok=True)
            self._objects[kind].pop(name, None)
