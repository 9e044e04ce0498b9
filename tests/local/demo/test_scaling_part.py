"""`demo --scaling` deletes its endpoint whatever happened: a timeout, a failed endpoint, an error."""

from __future__ import annotations

import pytest
from llama_operator.local.demo import scaling


class FakeKube:
    """Holds the applied endpoint with a fixed status until it is deleted."""

    def __init__(self, status: dict, fail_get: bool = False):
        self.status, self.fail_get = status, fail_get
        self.obj: dict | None = None
        self.deleted: list[str] = []

    def apply(self, doc: dict) -> dict:
        self.obj = {**doc, "status": dict(self.status)}
        return self.obj

    def get(self, plural: str, namespace: str, name: str):
        if self.fail_get and self.obj is not None:
            raise RuntimeError("API down")
        return self.obj

    def list(self, plural: str, namespace: str, api_version: str = ""):
        return []

    def delete(self, plural: str, namespace: str, name: str) -> int:
        self.deleted.append(name)
        self.obj, self.fail_get = None, False
        return 200


def run(kube, timeout: float = 0.3):
    said: list[str] = []
    result = scaling.run(kube, stack=None, namespace="default", model_uri="s3://b/model/", prompts=["hi"],
                         timeout=timeout, say=said.append)
    return result, said


def test_the_example_is_served_from_the_given_model_with_at_most_three_instances():
    doc = scaling._doc("s3://b/fine-tuned/model/")
    assert doc["spec"]["model"] == {"s3Uri": "s3://b/fine-tuned/model/"}
    assert 1 <= doc["spec"]["scaling"]["minInstances"] < doc["spec"]["scaling"]["maxInstances"] <= 3


def test_an_endpoint_that_never_serves_is_deleted_and_fails_the_part():
    kube = FakeKube({"phase": "Creating"})
    (ok, status), said = run(kube)
    assert not ok and status["phase"] == "Creating"
    assert kube.deleted == ["tiny-llama-scaling"]
    assert any("did not get ready" in s for s in said) and any("FAILED" in s for s in said)


def test_a_failed_endpoint_is_deleted_at_once():
    kube = FakeKube({"phase": "Failed", "failureReason": "no model"})
    (ok, _), said = run(kube, timeout=60)
    assert not ok and kube.deleted == ["tiny-llama-scaling"]
    assert any("no model" in s for s in said)


def test_an_error_still_deletes_the_endpoint():
    kube = FakeKube({"phase": "Creating"}, fail_get=True)
    with pytest.raises(RuntimeError, match="API down"):
        run(kube)
    assert kube.deleted == ["tiny-llama-scaling"]
