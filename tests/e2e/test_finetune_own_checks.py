"""What the operator itself makes of a LlamaFinetune spec that an API server without the CRD's
schema and rules stored: Failed naming the field, nothing sent to SageMaker, and a fixed spec runs.

Its own module, so its operator is the only consumer of its stack's events queue: two operators on
one queue take each other's events (the deployment gives each operator its own queue)."""

from __future__ import annotations

import json

import pytest

from operator_harness import BUCKET, PLURAL, finetune, jobs_for, phase_is, unique, wait_for


@pytest.fixture(scope="module")
def sm(local_aws):
    return local_aws.client("sagemaker")


def test_rejected_spec_goes_failed_with_aws_message_and_no_job(lax_kube, lax_operator, sm):
    kube = lax_kube  # the CRD's pattern would refuse this output at admission
    name = unique("badout")
    # SageMaker refuses an output that is not an s3:// URI.
    kube.apply(finetune(name, BUCKET, outputS3Uri="https://example.com/not-s3"))
    st = wait_for(phase_is(kube, name, "Failed"), timeout=30, what="Failed")
    assert "S3OutputPath" in st["failureReason"] or "outputS3Uri" in st["failureReason"]
    assert jobs_for(sm, name[:20]) == []


def test_invalid_spec_goes_failed_naming_the_field_and_creates_nothing(lax_kube, lax_operator, sm):
    # An API server without the CRD's rules stores it, so the operator's own validation answers.
    kube = lax_kube
    name = unique("invalid")
    manifest = finetune(name, BUCKET)
    manifest["spec"]["resources"] = {"instanceCount": 0}
    kube.apply(manifest)
    st = wait_for(phase_is(kube, name, "Failed"), timeout=30, what="Failed")
    assert "spec.resources.instanceType" in st["failureReason"]
    assert "spec.resources.instanceCount" in st["failureReason"]
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "InvalidSpec"
    assert jobs_for(sm, name[:20]) == []
    # Fixing the manifest and applying it again starts the job.
    kube.apply(finetune(name, BUCKET))
    try:
        st = wait_for(phase_is(kube, name, "Completed"), timeout=90, what="Completed after the fix")
    except AssertionError:
        raise AssertionError(json.dumps(kube.get(PLURAL, "default", name), indent=1)[:4000]) from None
    assert jobs_for(sm, name[:20]) == [st["trainingJobName"]]
    assert st["observedGeneration"] == 2
