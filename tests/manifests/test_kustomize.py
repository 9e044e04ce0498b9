"""`kubectl kustomize manifests` must render clean, schema-valid objects that install the operator
the way a platform team expects: restricted pods, probes, peering replicas, least privilege."""

import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from llama_operator.paths import manifests_dir

KUBE_VERSION = "1.31.0"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(manifests_dir())], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def test_builtin_objects_validate_against_kubernetes_schemas(rendered):
    builtin = [o for o in rendered if "." not in o["apiVersion"].split("/")[0] or o["apiVersion"].split("/")[0].endswith("k8s.io")]
    assert {o["kind"] for o in builtin} >= {
        "Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
        "ConfigMap", "Deployment", "Service"}
    for obj in builtin:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_custom_objects_validate_against_their_crds(rendered):
    crds = {(c["spec"]["group"], c["spec"]["names"]["kind"]): c for c in by_kind(rendered, "CustomResourceDefinition")}
    customs = [o for o in rendered if (o["apiVersion"].split("/")[0], o["kind"]) in crds]
    assert customs, "the peering object should be rendered"
    for obj in customs:
        crd = crds[(obj["apiVersion"].split("/")[0], obj["kind"])]
        version = next(v for v in crd["spec"]["versions"] if v["name"] == obj["apiVersion"].split("/")[1])
        jsonschema.validate(obj, version["schema"]["openAPIV3Schema"])


def test_everything_lands_in_the_operator_namespace(rendered):
    namespaced = [o for o in rendered if o["kind"] in {"ServiceAccount", "ConfigMap", "Deployment", "Service"}]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"llama-operator"}
    binding = by_kind(rendered, "ClusterRoleBinding")[0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llama-operator", "namespace": "llama-operator"}]


def test_deployment_is_hardened_and_observable(rendered):
    (deployment,) = by_kind(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    assert container["readinessProbe"]["httpGet"]["port"] == "health"
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in container["args"]
    assert f"--metrics-port={ports['metrics']}" in container["args"]
    # Replicas of equal priority would all freeze under kopf peering.
    assert any(a.startswith("--peering=") for a in container["args"])
    assert any(e["name"] == "POD_NAME" for e in container["env"])
    service = by_kind(rendered, "Service")[0]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_service_account_carries_the_irsa_annotation(rendered):
    (account,) = by_kind(rendered, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_rbac_never_grants_wildcards_or_writes_to_spec_owners(rendered):
    (role,) = by_kind(rendered, "ClusterRole")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        # The operator reports through status and events; it never creates or deletes users' resources.
        if "llamaops.dev" in rule["apiGroups"]:
            assert not {"create", "delete", "update"} & set(rule["verbs"])


def test_crds_render_with_printer_columns(rendered):
    crds = {c["spec"]["names"]["kind"]: c for c in by_kind(rendered, "CustomResourceDefinition")}
    assert {"LlamaFinetune", "LlamaEndpoint", "ClusterKopfPeering"} <= set(crds)
    columns = {k: [c["name"] for c in crds[k]["spec"]["versions"][0].get("additionalPrinterColumns", [])]
               for k in ("LlamaFinetune", "LlamaEndpoint")}
    assert columns["LlamaFinetune"][:5] == ["Status", "Job", "Instance", "Nodes", "Loss"]
    assert columns["LlamaEndpoint"][:5] == ["Status", "Endpoint", "Model", "Instance", "Instances"]
