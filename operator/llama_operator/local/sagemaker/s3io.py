"""Moving data between moto's S3 and local folders, as SageMaker does around a job or endpoint."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from llama_operator.artifacts import s3uri


def download_prefix(s3, uri: str, dest: Path) -> int:
    """Copy every object under an S3 prefix into dest, keeping the part of the key after the
    prefix (SageMaker's S3Prefix semantics). Returns the number of files."""
    bucket, prefix = s3uri.split(uri)
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/"):
                continue
            rel = key[len(prefix):].lstrip("/") or Path(key).name
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
            count += 1
    return count


def upload_dir(s3, src: Path, uri: str) -> int:
    bucket, prefix = s3uri.split(uri)
    count = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        key = "/".join(x for x in (prefix.rstrip("/"), path.relative_to(src).as_posix()) if x)
        s3.upload_file(str(path), bucket, key)
        count += 1
    return count


def tar_gz_dir(src: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(src.iterdir()) if src.exists() else []:
            tar.add(path, arcname=path.name)
    return buf.getvalue()


def upload_bytes(s3, data: bytes, uri: str) -> None:
    bucket, key = s3uri.split(uri)
    s3.put_object(Bucket=bucket, Key=key, Body=data)


def download_model(s3, uri: str, dest: Path, compressed: bool) -> None:
    """ModelDataUrl (a tar.gz, extracted) or an uncompressed S3 prefix into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    if not compressed:
        download_prefix(s3, uri, dest)
        return
    bucket, key = s3uri.split(uri)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


def read_tar_member(s3, uri: str, member: str) -> str | None:
    """The text of one file at the root of a tar.gz in S3 (a training job's source), or None."""
    bucket, key = s3uri.split(uri)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
        for info in tar.getmembers():
            if info.isfile() and info.name.lstrip("./") == member:
                return tar.extractfile(info).read().decode()
    return None


class ArchiveError(ValueError):
    """An archive that cannot be extracted safely (its message says which member and why)."""


def download_file(s3, uri: str, dest: Path) -> Path:
    """One S3 object into the file dest (botocore's errors as they come: NoSuchKey, NoSuchBucket)."""
    bucket, key = s3uri.split(uri)
    if not key or key.endswith("/"):
        raise ArchiveError(f"{uri} names no object (an S3 key ending in a file name, e.g. adapter.tar.gz)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]  # GetObject's own errors (NoSuchKey), not HEAD's 404
    with open(dest, "wb") as out:
        shutil.copyfileobj(body, out, 1 << 20)
    return dest


def extract_tar_gz_strictly(archive: Path, dest: Path) -> list[str]:
    """Extract a gzip-compressed tar into dest, refusing (ArchiveError, before anything is written)
    absolute names, names that climb out of dest, and every member that is not a regular file or a
    folder (symbolic and hard links, devices, FIFOs). Returns the members' normalised names.
    tarfile's own errors (not gzip, not a tar) come as they are."""
    names = []
    with tarfile.open(archive, mode="r:gz") as tar:
        members = tar.getmembers()
        for info in members:
            name = info.name
            parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
            if name.startswith(("/", "\\")) or ".." in parts:
                raise ArchiveError(f"member {name!r} points outside the archive's folder")
            if not (info.isfile() or info.isdir()):
                kind = ("a symbolic link" if info.issym() else "a hard link" if info.islnk()
                        else "not a regular file or folder")
                raise ArchiveError(f"member {name!r} is {kind}; only regular files and folders are accepted")
            if parts:
                names.append("/".join(parts))
        dest.mkdir(parents=True, exist_ok=True)
        tar.extractall(dest, members=members, filter="data")
    return names
