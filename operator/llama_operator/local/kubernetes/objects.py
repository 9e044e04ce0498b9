"""How the API server changes an object: JSON merge patch and JSON patch, and the rules of a
write (the status subresource, server-owned metadata, finalizers of an object being deleted)."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import kmock

# Metadata only the server sets; a client's write never changes it.
SERVER_META = ("uid", "creationTimestamp", "resourceVersion", "generation", "deletionTimestamp")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def rv(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def json_patch(doc: Any, ops: list) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test), as kopf sends for finalizer lists."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")] if op["path"] else []
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1] if parts else None
        kind = op["op"]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise kmock.KubernetesError(status=422, reason="Invalid", message=f"test failed at {op['path']}")
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(idx, copy.deepcopy(op["value"]))
                else:
                    parent[idx] = copy.deepcopy(op["value"])
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=f"unsupported JSON patch op {kind}")
    return doc


def written(old: dict, body: Any, method: str, subresource: str | None, has_status: bool) -> dict:
    """`old` after a PATCH (merge or JSON patch) or PUT of `body` to it or to its `/status`, before
    the server's bookkeeping (generation, resourceVersion): a write to `/status` changes only
    `status`, a write to the object never changes `status` or the server's metadata, and an object
    being deleted takes no new finalizers."""
    data = body if isinstance(body, dict) else {}
    if subresource == "status":
        new_status = data.get("status")
        new = copy.deepcopy(old)
        if method == "PATCH" and isinstance(body, list):
            new = merge_patch(old, {"status": json_patch(old, body).get("status")})
        elif method == "PATCH":
            new = merge_patch(old, {"status": new_status}) if "status" in data else new
        else:
            new.pop("status", None)
            if new_status is not None:
                new["status"] = new_status
    else:
        if method == "PATCH" and isinstance(body, list):
            new = json_patch(old, body)
            if has_status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
            for k in SERVER_META:
                if k in old.get("metadata", {}):
                    new["metadata"][k] = old["metadata"][k]
        elif method == "PATCH":
            patch = {k: v for k, v in data.items() if not (has_status and k == "status")}
            if isinstance(patch.get("metadata"), dict):
                patch["metadata"] = {k: v for k, v in patch["metadata"].items() if k not in SERVER_META}
            new = merge_patch(old, patch)
        else:  # PUT replaces all but status and the server's metadata
            new = copy.deepcopy(data)
            new_meta = new.setdefault("metadata", {})
            for k in SERVER_META + ("name", "namespace"):
                if k in old.get("metadata", {}):
                    new_meta[k] = old["metadata"][k]
            if has_status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
        if old.get("metadata", {}).get("deletionTimestamp"):
            # A real API server forbids new finalizers on an object being deleted.
            before = set(old["metadata"].get("finalizers", []))
            new["metadata"]["finalizers"] = [f for f in new["metadata"].get("finalizers", []) if f in before] or None
            if new["metadata"]["finalizers"] is None:
                new["metadata"].pop("finalizers")
    return new
