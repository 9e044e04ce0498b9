"""The embedded Kubernetes API: the server-side behaviour kopf and kubectl rely on, over HTTP."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from llama_operator.local.kubernetes.server import EmbeddedKubernetes
from specdata import FINETUNE_MIN

API = "llamaops.dev/v1alpha1"
BASE = f"/apis/{API}/namespaces/team-a/llamafinetunes"
MERGE = "application/merge-patch+json"


def manifest(name: str, spec: dict | None = None) -> dict:
    return {"apiVersion": API, "kind": "LlamaFinetune", "metadata": {"name": name, "namespace": "team-a"},
            "spec": spec or FINETUNE_MIN, "status": {"phase": "Forged"}}


@pytest.fixture(scope="module")
def kube():
    with EmbeddedKubernetes() as k:
        yield k


def test_create_fills_server_metadata_and_drops_status(kube):
    code, obj = kube.request("POST", BASE, manifest("meta"))
    assert code == 201
    meta = obj["metadata"]
    assert meta["namespace"] == "team-a" and meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"] and meta["resourceVersion"]
    assert "status" not in obj
    code, again = kube.request("POST", BASE, manifest("meta"))
    assert code == 409 and "already exists" in again["message"]


def test_generation_moves_on_spec_changes_only_and_status_is_a_subresource(kube):
    kube.request("POST", BASE, manifest("gen"))
    _, obj = kube.request("PATCH", f"{BASE}/gen", {"metadata": {"labels": {"a": "b"}}, "status": {"phase": "X"}}, MERGE)
    assert obj["metadata"]["generation"] == 1 and "status" not in obj
    rv = obj["metadata"]["resourceVersion"]
    _, obj = kube.request("PATCH", f"{BASE}/gen/status", {"status": {"phase": "InProgress"}, "spec": {"x": 1}}, MERGE)
    assert obj["status"] == {"phase": "InProgress"} and "x" not in obj["spec"]
    assert obj["metadata"]["generation"] == 1 and int(obj["metadata"]["resourceVersion"]) > int(rv)
    _, obj = kube.request("PATCH", f"{BASE}/gen", {"spec": {"deletionPolicy": "Retain"}}, MERGE)
    assert obj["metadata"]["generation"] == 2 and obj["status"] == {"phase": "InProgress"}
    # A patch that changes nothing writes nothing.
    _, same = kube.request("PATCH", f"{BASE}/gen", {"spec": {"deletionPolicy": "Retain"}}, MERGE)
    assert same["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_finalizers_hold_deletion_until_released(kube):
    kube.request("POST", BASE, manifest("fin"))
    kube.request("PATCH", f"{BASE}/fin", [{"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]}],
                 "application/json-patch+json")
    assert kube.delete("llamafinetunes", "team-a", "fin") == 200
    held = kube.get("llamafinetunes", "team-a", "fin")
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["x/y"]
    kube.request("PATCH", f"{BASE}/fin", {"metadata": {"finalizers": None}}, MERGE)
    assert kube.get("llamafinetunes", "team-a", "fin") is None


def test_lists_carry_kind_and_kubectl_can_read_them(kube, tmp_path):
    kube.request("POST", BASE, manifest("listed"))
    _, listing = kube.request("GET", BASE)
    assert listing["kind"] == "LlamaFinetuneList" and listing["apiVersion"] == API
    assert {i["kind"] for i in listing["items"]} == {"LlamaFinetune"}
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    config = kube.write_kubeconfig(tmp_path / "config")
    out = subprocess.run(["kubectl", "--kubeconfig", str(config), "get", "llamafinetunes", "-n", "team-a", "-o", "json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "listed" in [i["metadata"]["name"] for i in json.loads(out.stdout)["items"]]


def test_kubectl_get_prints_the_crd_printer_columns(kube, tmp_path):
    # what a user of the embedded default types: the columns must be the CRD's, as in a cluster
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    kube.request("POST", BASE, manifest("columns", {**FINETUNE_MIN, "resources": {"instanceType": "ml.g5.2xlarge", "instanceCount": 2}}))
    kube.request("PATCH", f"{BASE}/columns/status",
                 {"status": {"phase": "InProgress", "trainingJobName": "team-a-columns-1a2b3c4d", "trainingLoss": 1.25}},
                 content_type=MERGE)
    config = kube.write_kubeconfig(tmp_path / "config")

    def kubectl(*args):
        out = subprocess.run(["kubectl", "--kubeconfig", str(config), *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out

    table = kubectl("get", "lft", "-n", "team-a")
    assert "could also match" not in table.stderr  # the status subresource carries no short name
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "JOB", "INSTANCE", "NODES", "LOSS", "AGE"]
    row = next(line.split() for line in lines[1:] if line.startswith("columns "))
    assert row[:6] == ["columns", "InProgress", "team-a-columns-1a2b3c4d", "ml.g5.2xlarge", "2", "1.25"]
    one = kubectl("get", "llamafinetune", "columns", "-n", "team-a").stdout.splitlines()
    assert one[0].split()[:2] == ["NAME", "STATUS"] and one[1].split()[:2] == ["columns", "InProgress"]


def test_a_write_based_on_a_stale_read_is_refused(kube):
    # optimistic concurrency, which the operator's status writers rely on to never lose an update
    kube.request("POST", BASE, manifest("racy"))
    _, read = kube.request("GET", f"{BASE}/racy")
    stale = read["metadata"]["resourceVersion"]
    code, _ = kube.request("PATCH", f"{BASE}/racy/status", {"metadata": {"resourceVersion": stale},
                                                            "status": {"phase": "InProgress"}}, content_type=MERGE)
    assert code == 200
    code, body = kube.request("PATCH", f"{BASE}/racy/status", {"metadata": {"resourceVersion": stale},
                                                               "status": {"phase": "Pending"}}, content_type=MERGE)
    assert code == 409 and body["reason"] == "Conflict"
    assert kube.request("GET", f"{BASE}/racy")[1]["status"]["phase"] == "InProgress"
