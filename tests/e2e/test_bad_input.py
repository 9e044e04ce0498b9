"""Bad input as a user meets it. With plain `kubectl apply` against the embedded default, what the
CRDs can say is refused at admission and the error names the field, as a cluster's API server
does. What gets past an API server anyway (one without the CRDs' schemas and rules) ends Failed
with the field named in status and a Warning Event, and its delete completes."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from llama_operator.paths import manifests_dir
from operator_harness import wait_for

EXAMPLES = Path(manifests_dir()) / "examples"
FINETUNE = yaml.safe_load((EXAMPLES / "finetune-local.yaml").read_text())
ENDPOINT = next(d for d in yaml.safe_load_all((EXAMPLES / "endpoint-local.yaml").read_text())
                if d and d.get("kind") == "LlamaEndpoint")
needs_kubectl = pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")


def changed(doc: dict, name: str, **at) -> dict:
    """`doc` named `name`, with each `a__b=value` set (None removes it)."""
    out = copy.deepcopy(doc)
    out["metadata"]["name"] = name
    for path, value in at.items():
        *parents, last = path.split("__")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out


@pytest.fixture(scope="module")
def kubectl(kube, tmp_path_factory):
    folder = tmp_path_factory.mktemp("manifests")

    def run(*args, doc=None) -> subprocess.CompletedProcess:
        if doc is not None:
            path = folder / f"{uuid.uuid4().hex[:8]}.yaml"
            path.write_text(yaml.safe_dump(doc))
            args = (*args, "-f", str(path))
        return subprocess.run(["kubectl", "--kubeconfig", str(kube.kubeconfig_path), *args],
                              capture_output=True, text=True, timeout=60)
    return run


# (the mistake, the manifest, what kubectl's error must say)
REFUSED = [
    ("a name with capitals", changed(FINETUNE, "Bad_Name.X"), "metadata.name"),
    ("a 300-character name", changed(FINETUNE, "a" * 300), "must be no more than 253 characters"),
    ("an unknown field", changed(FINETUNE, "typo", spec__hyperparameter={"epochs": 1}),
     'unknown field "spec.hyperparameter"'),
    ("a missing required field", changed(FINETUNE, "norole", spec__roleArn=None), "spec.roleArn: Required value"),
    ("an unsupported enum value", changed(FINETUNE, "csv", spec__dataset__format="csv"),
     'spec.dataset.format: Unsupported value: "csv"'),
    ("a value above the maximum", changed(FINETUNE, "zero4", spec__method={"type": "deepspeed", "zeroStage": 4}),
     "spec.method.zeroStage: Invalid value: 4"),
    ("a value below the minimum", changed(FINETUNE, "nodes0", spec__resources__instanceCount=0),
     "spec.resources.instanceCount"),
    ("the wrong type", changed(FINETUNE, "epochs", spec__hyperparameters__epochs="two"),
     "spec.hyperparameters.epochs"),
    ("a pattern", changed(FINETUNE, "arn", spec__roleArn="sagemaker-llama-execution"), "spec.roleArn"),
    ("a cross-field rule", changed(FINETUNE, "smpzero", spec__method={"type": "smp", "zeroStage": 3}),
     "method.zeroStage applies only to method.type deepspeed"),
    ("a spec that is a list", changed(FINETUNE, "listspec", spec=[1, 2]), "spec"),
    ("an unknown engine", changed(ENDPOINT, "engine", spec__serving__engine="tgi"), "spec.serving.engine"),
    ("both model sources", changed(ENDPOINT, "twomodels", spec__model={"fromFinetune": "a", "s3Uri": "s3://b/m/"}),
     "spec.model"),
]


@needs_kubectl
@pytest.mark.parametrize("what,doc,said", REFUSED, ids=[r[0] for r in REFUSED])
def test_kubectl_apply_of_a_bad_manifest_is_refused_with_the_field_named(kubectl, kube, what, doc, said):
    out = kubectl("apply", doc=doc)
    assert out.returncode != 0, f"{what}: accepted\n{out.stdout}"
    assert said in out.stderr, out.stderr
    plural = "llamafinetunes" if doc["kind"] == "LlamaFinetune" else "llamaendpoints"
    assert kube.get(plural, "default", doc["metadata"]["name"]) is None


@needs_kubectl
def test_a_fine_tunes_spec_is_fixed_in_place_until_its_job_exists_then_only_its_deletion_policy(kubectl, kube):
    doc = changed(FINETUNE, "immutable")
    assert kubectl("apply", doc=doc).returncode == 0
    fixed = kubectl("apply", doc=changed(doc, "immutable", spec__hyperparameters__learningRate=0.001))
    assert fixed.returncode == 0, fixed.stderr  # no job yet: a refused spec can be fixed in place
    doc = changed(doc, "immutable", spec__hyperparameters__learningRate=0.001)
    code, _ = kube.request("PATCH", "/apis/llamaops.dev/v1alpha1/namespaces/default/llamafinetunes/immutable/status",
                           {"status": {"phase": "InProgress", "trainingJobName": "default-immutable-0123abcd"}},
                           "application/merge-patch+json")  # as the operator records the job it made
    assert code == 200
    out = kubectl("apply", doc=changed(doc, "immutable", spec__hyperparameters__learningRate=0.5))
    assert out.returncode != 0 and "spec is immutable once the training job exists" in out.stderr, out.stderr
    kept = kubectl("apply", doc=changed(doc, "immutable", spec__deletionPolicy="Retain"))
    assert kept.returncode == 0, kept.stderr
    got = json.loads(kubectl("get", "lft", "immutable", "-o", "json").stdout)
    assert got["spec"]["deletionPolicy"] == "Retain" and got["spec"]["hyperparameters"]["learningRate"] == 0.001
    assert got["spec"]["hyperparameters"]["seed"] == 42  # the CRD's defaults, filled in by the API server


@needs_kubectl
def test_kubectl_explain_prints_the_field_docs(kubectl):
    out = kubectl("explain", "llamafinetune.spec.method")
    assert out.returncode == 0, out.stderr
    assert "zeroStage" in out.stdout and "DeepSpeed ZeRO stage" in out.stdout
    out = kubectl("explain", "llamaendpoint.spec.serving.maxBatchSize")
    assert out.returncode == 0 and "<integer>" in out.stdout, out.stderr


# ---- what gets past an API server without the CRDs' rules -----------------------------------

FIELDS = ["baseModel", "dataset", "method", "hyperparameters", "resources", "roleArn", "outputS3Uri", "model",
          "serving", "deployment", "deletionPolicy", "image", "environment", "tags", "s3Uri", "type"]
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2, 10**6) | st.floats(allow_nan=False, width=32)
                    | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=4),
                    max_leaves=10)
SPECS = JSON | st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6)


def _warnings(kube, name: str) -> list[dict]:
    return [e for e in kube.list("events", "default", api_version="v1")
            if e["involvedObject"]["name"] == name and e.get("type") == "Warning"]


@hsettings(max_examples=25, deadline=None, derandomize=True,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=SPECS)
def test_any_spec_ends_failed_with_the_field_named_and_deletes(lax_kube, lax_operator, spec):
    for kind, plural in (("LlamaFinetune", "llamafinetunes"), ("LlamaEndpoint", "llamaendpoints")):
        name = f"any-{uuid.uuid4().hex[:8]}"
        doc = {"apiVersion": "llamaops.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": "default"}}
        if spec is not None:
            doc["spec"] = spec
        lax_kube.apply(doc)
        status = wait_for(lambda: (lax_kube.get(plural, "default", name) or {}).get("status", {}).get("phase")
                          and lax_kube.get(plural, "default", name)["status"], 30, f"a phase for {kind} {spec!r}")
        assert status["phase"] == "Failed", status
        assert "spec" in status["failureReason"] and "fix the manifest" in status["failureReason"], status
        assert any("spec" in e["message"] for e in wait_for(lambda: _warnings(lax_kube, name), 10, "a Warning"))
        assert lax_operator.error is None
        lax_kube.delete(plural, "default", name)
        wait_for(lambda: lax_kube.get(plural, "default", name) is None, 30, f"{kind} {name} deleted")
