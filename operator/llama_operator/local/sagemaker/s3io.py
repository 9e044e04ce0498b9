"""Moving data between moto's S3 and local folders, as SageMaker does around a job or endpoint."""

from __future__ import annotations

import io
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
