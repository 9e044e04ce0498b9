"""Fixtures for the operator's integration tests: the local SageMaker service (with moto's S3 and
SQS), the embedded Kubernetes API, and the AWS variables pointing boto3 at them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from operator_harness import seeded_stack  # noqa: E402


@pytest.fixture(scope="module")
def local_aws(tmp_path_factory):
    with seeded_stack(tmp_path_factory.mktemp("sagemaker")) as stack:
        yield stack


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    from llama_operator.local.kubernetes.server import EmbeddedKubernetes

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
    from operator_harness import write_stub_server

    containers = write_stub_server(tmp_path_factory.mktemp("stub-serving"))
    with seeded_stack(tmp_path_factory.mktemp("sagemaker"), containers=containers) as stack:
        yield stack


@pytest.fixture(scope="module")
def lax_kube(tmp_path_factory):
    """An API server that knows our kinds but not their schemas or rules: it stores any spec, so
    what the operator itself makes of bad input shows."""
    from llama_operator.local.kubernetes.server import EmbeddedKubernetes

    with EmbeddedKubernetes(crds_dir=tmp_path_factory.mktemp("no-crds")) as k:
        k.kubeconfig_path = k.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
        yield k


@pytest.fixture(scope="module")
def lax_operator(local_aws, workloads, lax_kube):
    """Both kinds' handlers against `lax_kube`; status from events (an hour's resync)."""
    from llama_operator.settings import Settings
    from operator_harness import InProcessOperator

    settings = Settings(region=local_aws.env["AWS_DEFAULT_REGION"],
                        events_queue_url=local_aws.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"], resync_seconds=3600,
                        workloads_dir=workloads, retry_seconds=0.5, stop_poll_seconds=0.5, events_wait_seconds=1)
    with InProcessOperator(settings, lax_kube.kubeconfig_path, endpoints=True) as op:
        yield op
