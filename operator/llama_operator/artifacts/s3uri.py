"""One way to read an s3:// URI, for everything that puts or reads objects."""

from __future__ import annotations


def split(uri: str) -> tuple[str, str]:
    """(bucket, key or prefix) of `s3://bucket/key`; ValueError naming the URI otherwise."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI (expected s3://bucket/prefix/)")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket (expected s3://bucket/prefix/)")
    return bucket, key
