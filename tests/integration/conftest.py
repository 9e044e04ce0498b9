"""Fixtures for the operator's integration tests: the local SageMaker service (with moto's S3 and
SQS), the embedded Kubernetes API, and the AWS variables pointing boto3 at them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

BUCKET = "finetune-it"


@pytest.fixture(scope="module")
def local_aws(tmp_path_factory):
    from llama_operator.local.stack import LocalStack

    with LocalStack(tmp_path_factory.mktemp("sagemaker")) as stack:
        s3 = stack.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="models/tiny/config.json", Body=b'{"model_type": "llama"}')
        s3.put_object(Bucket=BUCKET, Key="data/dailydialog/train.txt", Body=b"Person1: hi##Person2: hello")
        saved = {k: os.environ.get(k) for k in stack.env}
        os.environ.update(stack.env)
        try:
            yield stack
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    from llama_operator.local.kubernetes import EmbeddedKubernetes

    with EmbeddedKubernetes() as k:
        k.kubeconfig_path = k.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
        yield k


@pytest.fixture(scope="module")
def workloads(tmp_path_factory):
    from operator_harness import write_workloads

    return write_workloads(tmp_path_factory.mktemp("workloads"))


@pytest.fixture(scope="module")
def stub_serving_aws(tmp_path_factory):
    """Like `local_aws`, and endpoints whose image is operator_harness.STUB_IMAGE are served by a
    stub server that is ready at once (for tests about the operator, not about serving)."""
    from llama_operator.local.stack import LocalStack
    from operator_harness import write_stub_server

    containers = write_stub_server(tmp_path_factory.mktemp("stub-serving"))
    with LocalStack(tmp_path_factory.mktemp("sagemaker"), containers=containers) as stack:
        s3 = stack.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="models/tiny/config.json", Body=b'{"model_type": "llama"}')
        s3.put_object(Bucket=BUCKET, Key="data/dailydialog/train.txt", Body=b"Person1: hi##Person2: hello")
        saved = {k: os.environ.get(k) for k in stack.env}
        os.environ.update(stack.env)
        try:
            yield stack
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
