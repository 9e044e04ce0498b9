"""The training source tarball: `workloads/` packed reproducibly and stored content-addressed.

Same files -> same bytes -> same sha256 -> same key, so re-applies and restarts upload nothing."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path
from typing import Mapping

from llama_operator.artifacts import s3uri
from llama_operator.artifacts.upload import put_missing

_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".git"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


def _files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts) or path.suffix in _SKIP_SUFFIXES:
            continue
        if path.is_file():
            out.append(path)
    return out


def requirements_for(root: Path, method: str, peft: str | None = None) -> dict[str, bytes]:
    """The source root's `requirements.txt` for a method: what its image lacks
    (`workloads/requirements/<method>.txt`, see docs/images.md), plus `<peft>.txt` where there is
    one (qlora: bitsandbytes). SageMaker's training toolkit pip-installs it before the entry point."""
    parts = [Path(root) / "requirements" / f"{name}.txt" for name in (method, peft) if name]
    text = b"".join(p.read_bytes() for p in parts if p.is_file())
    return {"requirements.txt": text} if text else {}


def pack(root: Path, extra: Mapping[str, bytes] | None = None) -> bytes:
    """A gzipped tar of `root` plus `extra` files at its root: sorted entries, fixed
    mtimes/owners/modes, no caches."""
    root = Path(root)
    entries = {path.relative_to(root).as_posix(): (path.read_bytes(), 0o755 if path.stat().st_mode & 0o100 else 0o644)
               for path in _files(root)}
    entries.update({name: (data, 0o644) for name, data in (extra or {}).items()})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(entries):
            data, mode = entries[name]
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0, 0, "", ""
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def source_uri(prefix_uri: str, digest: str) -> str:
    """The tarball's URI under the operator's prefix (LLAMA_OPERATOR_SOURCE_S3_URI, the stack's
    SourceS3Uri output): `<prefix>/source/<digest>.tar.gz`, with or without the prefix's trailing
    slash; `s3://bucket/` gives `s3://bucket/source/<digest>.tar.gz`."""
    bucket, prefix = s3uri.split(prefix_uri)
    prefix = prefix.strip("/")
    key = f"{prefix}/source/{digest}.tar.gz" if prefix else f"source/{digest}.tar.gz"
    return f"s3://{bucket}/{key}"


def upload(s3, root: Path, prefix_uri: str, extra: Mapping[str, bytes] | None = None) -> tuple[str, bool]:
    """(s3 URI of the tarball, uploaded?) — nothing is sent when the key already holds it."""
    body = pack(root, extra)
    uri = source_uri(prefix_uri, hashlib.sha256(body).hexdigest())
    folder, _, name = uri.rpartition("/")
    return uri, put_missing(s3, folder + "/", {name: body}, content_type="application/gzip")
