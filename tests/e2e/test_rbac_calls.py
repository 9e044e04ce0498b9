"""The ClusterRole in manifests/rbac.yaml against the Kubernetes API calls the operator really makes.

The real operator (kopf, both kinds' handlers, the SQS events consumer), configured as
manifests/deployment.yaml runs it (all namespaces, peering through the ClusterKopfPeering
"llama-operator"), goes through a full lifecycle against the embedded Kubernetes API: a
LlamaFinetune trains to completion, a LlamaEndpoint `fromFinetune` waits for it and goes
InService, both are deleted, the operator stops. The emulator (kmock) records every request it
serves; each of the operator's is mapped to the RBAC (apiGroup, resource[/subresource], verb) a
real API server would authorise it as. Then:
- every call is allowed by some rule of the ClusterRole (in a cluster nothing is denied);
- every (apiGroup, resource, verb) the ClusterRole grants was used, or is one of UNEXERCISED,
  each with the reason this run cannot show it (least privilege)."""

from __future__ import annotations

import copy
import uuid

import pytest
import yaml

from operator_harness import BUCKET
from operator_harness import InProcessOperator, endpoint, finetune, wait_for
from llama_operator.local.kubernetes.resources import crd_resources
from llama_operator.local.kubernetes.server import EmbeddedKubernetes
from llama_operator.paths import crds_dir, manifests_dir
from llama_operator.settings import Settings

PEERING = "llama-operator"  # deployment.yaml: --peering=llama-operator
NS = "default"

# Grants the ClusterRole needs that this run cannot exercise, each with the reason. Keep it tiny:
# today it is empty, as the run below reaches every rule (the CRD watch and peering included).
UNEXERCISED: dict[tuple[str, str, str], str] = {}

# The emulator knows CRDs as a resource, so kopf's observer of CRDs (appearing, going) runs as in
# a cluster; it is cluster-scoped, like kopf's peering kind from manifests/peering.yaml.
CRD_RESOURCE = {"apiextensions.k8s.io/v1/customresourcedefinitions": {
    "kind": "CustomResourceDefinition", "singular": "customresourcedefinition", "namespaced": False,
    "verbs": {"get", "list", "watch", "create", "update", "patch", "delete"}, "shortnames": {"crd", "crds"}}}


def rbac_call(method: str, path: str, params) -> tuple[str, str, str] | None:
    """(apiGroup, resource[/subresource], verb) that a request is authorised as; None for the
    non-resource discovery paths (/api, /api/v1, /apis, /apis/GROUP[/VERSION], /version)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]  # namespaces/NS/RESOURCE[/NAME[/SUB]]; else the namespaces resource itself
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
    method = method.upper()
    if method == "GET":
        verb = "watch" if str(params.get("watch", "")).lower() in ("true", "1") else "get" if name else "list"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}[method]
    return group, resource + (f"/{sub}" if sub else ""), verb


def cluster_role() -> dict:
    docs = yaml.safe_load_all((manifests_dir() / "rbac.yaml").read_text())
    (role,) = [d for d in docs if d and d.get("kind") == "ClusterRole"]
    return role


def grants(role: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule.get("apiGroups", [])
            for r in rule.get("resources", []) for v in rule.get("verbs", [])}


def allows(role: dict, call: tuple[str, str, str], name: str | None) -> bool:
    group, resource, verb = call
    return any(group in rule.get("apiGroups", []) and resource in rule.get("resources", [])
               and verb in rule.get("verbs", [])
               and (not rule.get("resourceNames") or name in rule["resourceNames"])
               for rule in role["rules"])


def object_name(path: str) -> str | None:
    """The object a resource path names, if any (…/RESOURCE/NAME[/SUB])."""
    parts = [p for p in path.split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    return rest[1] if len(rest) > 1 else None


def test_rbac_call_mapping():
    q = {}
    assert rbac_call("GET", "/apis/llamaops.dev/v1alpha1/llamafinetunes", {"watch": "true"}) == \
        ("llamaops.dev", "llamafinetunes", "watch")
    assert rbac_call("GET", "/apis/llamaops.dev/v1alpha1/llamafinetunes", q) == ("llamaops.dev", "llamafinetunes", "list")
    assert rbac_call("GET", "/apis/llamaops.dev/v1alpha1/namespaces/a/llamaendpoints/x", q) == \
        ("llamaops.dev", "llamaendpoints", "get")
    assert rbac_call("PATCH", "/apis/llamaops.dev/v1alpha1/namespaces/a/llamaendpoints/x/status", q) == \
        ("llamaops.dev", "llamaendpoints/status", "patch")
    assert rbac_call("POST", "/api/v1/namespaces/a/events", q) == ("", "events", "create")
    assert rbac_call("GET", "/api/v1/namespaces", q) == ("", "namespaces", "list")
    assert rbac_call("GET", "/api/v1/namespaces/a", q) == ("", "namespaces", "get")
    assert rbac_call("PATCH", "/apis/kopf.dev/v1/clusterkopfpeerings/p", q) == ("kopf.dev", "clusterkopfpeerings", "patch")
    assert rbac_call("PUT", "/apis/kopf.dev/v1/clusterkopfpeerings/p", q) == ("kopf.dev", "clusterkopfpeerings", "update")
    assert rbac_call("DELETE", "/api/v1/namespaces/a/events", q) == ("", "events", "deletecollection")
    assert object_name("/apis/llamaops.dev/v1alpha1/namespaces/a/llamaendpoints/x/status") == "x"
    assert object_name("/apis/kopf.dev/v1/clusterkopfpeerings/p") == "p"
    assert object_name("/api/v1/namespaces/a/events") is None
    for discovery in ("/api", "/api/v1", "/apis", "/apis/kopf.dev", "/apis/kopf.dev/v1", "/version"):
        assert rbac_call("GET", discovery, q) is None


@pytest.fixture(scope="module")
def recorded(stub_serving_aws, workloads, tmp_path_factory):
    """The lifecycle; returns (the operator's requests as (method, path, params), the test's own)."""
    peering_docs = [d for d in yaml.safe_load_all((manifests_dir() / "peering.yaml").read_text()) if d]
    extra = {k: v for k, v in crd_resources(manifests_dir()).items() if k.startswith("kopf.dev/")}
    assert extra, "manifests/peering.yaml defines the ClusterKopfPeering kind"
    env = stub_serving_aws.env
    settings = Settings(region=env["AWS_DEFAULT_REGION"], events_queue_url=env["LLAMA_OPERATOR_EVENTS_QUEUE_URL"],
                        resync_seconds=3600, workloads_dir=workloads, retry_seconds=0.5, stop_poll_seconds=0.5,
                        events_wait_seconds=1, source_s3_uri=f"s3://{BUCKET}/operator")
    with EmbeddedKubernetes(crds_dir=crds_dir(), extra_resources={**extra, **CRD_RESOURCE}) as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
        # What `kubectl apply -k manifests` puts there before the operator starts: the CRDs and
        # the peering object.
        crd_docs = [d for p in sorted(crds_dir().glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
                    if d and d.get("kind") == "CustomResourceDefinition"]
        for doc in crd_docs + peering_docs:
            plural = "customresourcedefinitions" if doc["kind"] == "CustomResourceDefinition" else \
                "clusterkopfpeerings"
            group_version = doc["apiVersion"]
            code, body = kube.request("POST", f"/apis/{group_version}/{plural}", copy.deepcopy(doc))
            assert code == 201, body
        start = len(kube.requests())

        ft, ep = f"rbac-ft-{uuid.uuid4().hex[:6]}", f"rbac-ep-{uuid.uuid4().hex[:6]}"
        with InProcessOperator(settings, kubeconfig, endpoints=True, peering=PEERING):
            kube.apply(finetune(ft, BUCKET, namespace=NS))
            kube.apply(endpoint(ep, namespace=NS, role="arn:aws:iam::123456789012:role/sagemaker-endpoint",
                                source={"fromFinetune": ft}))
            tuned = wait_for(lambda: (kube.get("llamafinetunes", NS, ft) or {}).get("status", {}).get("phase")
                             in ("Completed", "Failed"), timeout=40, what=f"{ft} to finish")
            assert tuned
            assert kube.get("llamafinetunes", NS, ft)["status"]["phase"] == "Completed"
            wait_for(lambda: (kube.get("llamaendpoints", NS, ep) or {}).get("status", {}).get("phase")
                     == "InService", timeout=40, what=f"{ep} InService")
            kube.delete("llamaendpoints", NS, ep)
            kube.delete("llamafinetunes", NS, ft)
            wait_for(lambda: kube.get("llamaendpoints", NS, ep) is None and kube.get("llamafinetunes", NS, ft) is None,
                     timeout=30, what="both to be deleted")
        requests = kube.requests()[start:]
    ours, theirs = [], []
    for r in requests:
        # the test's own calls go through urllib (EmbeddedKubernetes.request); kopf and the
        # operator's KubeWriter use aiohttp
        (theirs if r.headers.get("User-Agent", "").startswith("Python-urllib") else ours).append(
            (str(r.method.value).upper(), r.url.path, dict(r.params)))
    assert theirs, "the test's own requests are told apart by their User-Agent"
    return ours


def test_every_call_the_operator_makes_is_allowed_and_every_grant_is_used(recorded):
    role = cluster_role()
    granted = grants(role)
    discovery = [(m, p) for m, p, q in recorded if rbac_call(m, p, q) is None]
    calls, denied = {}, {}
    for m, p, q in recorded:
        call = rbac_call(m, p, q)
        if call is None:
            continue
        example = f"{m} {p}{'?watch=true' if call[2] == 'watch' else ''}"
        calls.setdefault(call, example)
        if not allows(role, call, object_name(p)):
            denied.setdefault(call, example)
    print("\n".join(f"{c} <- {e}" for c, e in sorted(calls.items())))
    print("discovery:", sorted(set(discovery)))

    # Discovery is a non-resource URL every authenticated user may GET (system:discovery).
    assert discovery and all(m == "GET" for m, _ in discovery), discovery
    assert not denied, f"calls the ClusterRole does not allow (the operator would get 403): {denied}"
    unused = granted - set(calls) - set(UNEXERCISED)
    assert not unused, f"grants never used by the operator (not least privilege): {sorted(unused)}"
    # the run saw the operator's whole surface
    assert {("llamaops.dev", "llamafinetunes", "watch"), ("llamaops.dev", "llamaendpoints/status", "patch"),
            ("", "events", "create"), ("kopf.dev", "clusterkopfpeerings", "patch")} <= set(calls)
