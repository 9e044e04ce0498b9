"""Fixtures for the local SageMaker service: a running service, reached only through boto3."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from llama_operator.local.stack import LocalStack  # noqa: E402
from sagemaker_helpers import BUCKET, CONTAINERS, EventLog, validated  # noqa: E402


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with LocalStack(tmp_path_factory.mktemp("sm-state"), containers=CONTAINERS) as s:
        s.client("s3").create_bucket(Bucket=BUCKET)
        yield s


@pytest.fixture(scope="module")
def sm(stack):
    return validated(stack.client("sagemaker"))


@pytest.fixture(scope="module")
def s3(stack):
    return stack.client("s3")


@pytest.fixture(scope="module")
def events(stack):
    return EventLog(stack.client("sqs"), stack.env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"])


@pytest.fixture(scope="module")
def rt(stack):
    return validated(stack.client("sagemaker-runtime"))


@pytest.fixture(scope="module")
def aas(stack):
    return validated(stack.client("application-autoscaling"))
