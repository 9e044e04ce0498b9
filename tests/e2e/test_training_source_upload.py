"""The content-addressed training source tarball against moto's S3."""

from __future__ import annotations

import hashlib

from operator_harness import BUCKET
from llama_operator.artifacts import training_source


def test_source_tarball_is_reproducible_and_uploaded_once(local_aws, tmp_path):
    root = tmp_path / "workloads"
    (root / "train" / "__pycache__").mkdir(parents=True)
    (root / "train_entry.py").write_text("print('hi')\n")
    (root / "train" / "job.py").write_text("x = 1\n")
    (root / "train" / "__pycache__" / "job.cpython-311.pyc").write_bytes(b"\0")
    first = training_source.pack(root)
    (root / "train" / "job.py").touch()  # a new mtime changes nothing
    assert training_source.pack(root) == first
    s3 = local_aws.client("s3")
    uri, uploaded = training_source.upload(s3, root, f"s3://{BUCKET}/ops")
    assert uploaded and uri == f"s3://{BUCKET}/ops/source/{hashlib.sha256(first).hexdigest()}.tar.gz"
    assert training_source.upload(s3, root, f"s3://{BUCKET}/ops") == (uri, False)
    import io
    import tarfile
    body = s3.get_object(Bucket=BUCKET, Key=uri.split("/", 3)[3])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert sorted(tar.getnames()) == ["train/job.py", "train_entry.py"]
