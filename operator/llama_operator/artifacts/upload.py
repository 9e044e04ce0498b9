"""Content-addressed uploads: the key already names the content, so an object of the same size
under it is the same object and is not sent again."""

from __future__ import annotations

import os
from typing import Mapping

from llama_operator.artifacts import s3uri


def put_missing(s3, prefix_uri: str, files: Mapping[str, bytes], *, content_type: str | None = None) -> bool:
    """Put each of `files` under `prefix_uri` (s3://bucket/prefix/) unless it is already there
    with the same size; True when anything was uploaded."""
    bucket, prefix = s3uri.split(prefix_uri)
    keys = {prefix + name: data for name, data in files.items()}
    present: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=os.path.commonprefix(list(keys))):
        for obj in page.get("Contents", []):
            present[obj["Key"]] = obj["Size"]
    uploaded = False
    for key, data in sorted(keys.items()):
        if present.get(key) != len(data):
            extra = {"ContentType": content_type} if content_type else {}
            s3.put_object(Bucket=bucket, Key=key, Body=data, **extra)
            uploaded = True
    return uploaded


def is_missing(exc) -> bool:
    """Whether an S3 ClientError says the object is not there (HeadObject answers a bare 404)."""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def copy_missing(s3, copies: list[tuple[str, str]]) -> int:
    """Server-side copies (source, destination object URIs) of the objects not yet at their
    destination with the source's size; the number copied. A missing source raises
    FileNotFoundError naming it."""
    from botocore.exceptions import ClientError

    done = 0
    for src, dst in copies:
        sb, sk = s3uri.split(src)
        db, dk = s3uri.split(dst)
        try:
            size = s3.head_object(Bucket=sb, Key=sk)["ContentLength"]
        except ClientError as exc:
            if is_missing(exc):
                raise FileNotFoundError(src) from None
            raise
        listed = s3.list_objects_v2(Bucket=db, Prefix=dk, MaxKeys=1).get("Contents", [])
        if listed and listed[0]["Key"] == dk and listed[0]["Size"] == size:
            continue
        s3.copy_object(Bucket=db, Key=dk, CopySource={"Bucket": sb, "Key": sk})
        done += 1
    return done
