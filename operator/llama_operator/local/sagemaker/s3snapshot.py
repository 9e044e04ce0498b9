"""moto keeps S3 in memory; the service copies it to the state dir when it stops and back when it
starts, so a restart keeps training artifacts and uploaded models like the rest of the state.
(A crash loses what changed in S3 since the last clean stop.)"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def save(s3, folder: Path) -> int:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    count = 0
    for bucket in s3.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        (tmp / name).mkdir()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/") or ".." in Path(key).parts:
                    continue
                target = tmp / name / "objects" / key
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(name, key, str(target))
                count += 1
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return count


def restore(s3, folder: Path) -> int:
    if not folder.is_dir():
        return 0
    count = 0
    for bucket_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        s3.create_bucket(Bucket=bucket_dir.name)
        objects = bucket_dir / "objects"
        for path in sorted(p for p in objects.rglob("*") if p.is_file()) if objects.exists() else []:
            s3.upload_file(str(path), bucket_dir.name, path.relative_to(objects).as_posix())
            count += 1
    return count
