"""A LoRA adapter directory packed as the gzip-compressed tar SageMaker loads an adapter
inference component from (Container.ArtifactUrl).

A pack is named by its source and the source objects' ETags, so re-applies and restarts pack
nothing again, and an adapter re-uploaded under the same prefix gets a new pack (and its
component a new ArtifactUrl). Adapters are small (megabytes): the operator reads and writes them
itself."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

from llama_operator.artifacts import s3uri
from llama_operator.artifacts.endpoint_code import ADAPTER_FILES
from llama_operator.artifacts.upload import is_missing

PACK_NAME = "adapter.tar.gz"


def _etags(s3, bucket: str, prefix: str) -> dict[str, str]:
    """{file: ETag} of the adapter's files under s3://bucket/prefix; FileNotFoundError naming the
    first one missing."""
    from botocore.exceptions import ClientError

    out = {}
    for f in ADAPTER_FILES:
        try:
            out[f] = s3.head_object(Bucket=bucket, Key=prefix + f)["ETag"]
        except ClientError as exc:
            if is_missing(exc):
                raise FileNotFoundError(f"s3://{bucket}/{prefix}{f}") from None
            raise
    return out


def pack_uri(packs_base_uri: str, source_uri: str, etags: dict[str, str]) -> str:
    digest = hashlib.sha256("\0".join([source_uri.rstrip("/"), *(f"{k}={etags[k]}" for k in sorted(etags))])
                            .encode()).hexdigest()[:32]
    return f"{packs_base_uri.rstrip('/')}/adapter-packs/{digest}/{PACK_NAME}"


def tar_gz(files: dict[str, bytes]) -> bytes:
    """The files at the top level of a gzip'd tar; the same bytes for the same files (no times)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tar.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(raw.getvalue(), mtime=0)


def ensure_pack(s3, source_uri: str, packs_base_uri: str) -> str:
    """The pack of the adapter under `source_uri` (made now unless already there): its s3:// URI.
    FileNotFoundError names an adapter file that is not there."""
    src_bucket, prefix = s3uri.split(source_uri.rstrip("/") + "/")
    uri = pack_uri(packs_base_uri, source_uri, _etags(s3, src_bucket, prefix))
    bucket, key = s3uri.split(uri)
    if s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("KeyCount", 0):
        return uri
    files = {f: s3.get_object(Bucket=src_bucket, Key=prefix + f)["Body"].read() for f in ADAPTER_FILES}
    s3.put_object(Bucket=bucket, Key=key, Body=tar_gz(files), ContentType="application/gzip")
    return uri
