"""What the embedded API serves: our kinds (from the CRDs in `crds/` when present), the core kinds
kopf needs, and the CRDs' printer columns for server-side tables."""

from __future__ import annotations

from pathlib import Path

from llama_operator.kinds import ENDPOINT_KIND, ENDPOINTS, FINETUNE_KIND, FINETUNES, GROUP, VERSION
from llama_operator.local.kubernetes.admission import Schema
from llama_operator.local.kubernetes.table import rows

# Used when crds/ has no definition (yet): enough for discovery and routing.
BUILTIN = {
    FINETUNES: {"kind": FINETUNE_KIND, "singular": "llamafinetune", "shortnames": {"lft"}},
    ENDPOINTS: {"kind": ENDPOINT_KIND, "singular": "llamaendpoint", "shortnames": {"lep"}},
}
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
# kopf's namespace observer waits for namespaces; kopf posts events
CORE = {
    "v1/namespaces": {"kind": "Namespace", "singular": "namespace", "namespaced": False,
                      "verbs": VERBS, "shortnames": {"ns"}},
    "v1/events": {"kind": "Event", "singular": "event", "namespaced": True, "verbs": VERBS, "shortnames": {"ev"}},
}


def _crds(crds_dir: Path | None):
    """Every CustomResourceDefinition in the folder's YAML files."""
    if crds_dir and crds_dir.is_dir():
        import yaml

        for path in sorted(crds_dir.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    yield doc


def crd_printer_columns(crds_dir: Path | None) -> dict[str, list[dict]]:
    """{plural: additionalPrinterColumns} of our CRDs, for server-side tables."""
    return {doc["spec"]["names"]["plural"]: list(ver.get("additionalPrinterColumns", []))
            for doc in _crds(crds_dir) for ver in doc["spec"].get("versions", [])}


def crd_schemas(crds_dir: Path | None) -> dict[str, Schema]:
    """{plural: its served version's schema}, for admission and /openapi."""
    return {doc["spec"]["names"]["plural"]: Schema(doc["spec"]["names"]["kind"], doc["spec"]["group"], ver["name"],
                                                   ver["schema"]["openAPIV3Schema"])
            for doc in _crds(crds_dir) for ver in doc["spec"].get("versions", [])
            if ver.get("served", True) and (ver.get("schema") or {}).get("openAPIV3Schema")}


def as_table(objects: list[dict], columns: list[dict], resource_version: str) -> dict:
    """A meta.k8s.io/v1 Table, as the API server answers `kubectl get` (Accept: ...;as=Table):
    the CRD's printer columns, ages already human-readable as the server renders date columns."""
    header = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
               "description": "Name of the object"}]
    header += [{"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
                "priority": c.get("priority", 0), "description": c.get("description", "")} for c in columns]
    body = rows(objects, columns)[1:]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": header,
            "rows": [{"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                 "metadata": obj.get("metadata", {})}}
                     for cells, obj in zip(body, objects)]}


def crd_resources(crds_dir: Path | None) -> dict[str, dict]:
    """{"group/version/plural": ResourceInfo kwargs} for our kinds, from the CRD files if any."""
    found: dict[str, dict] = {}
    for doc in _crds(crds_dir):
        spec, names = doc["spec"], doc["spec"]["names"]
        for ver in spec.get("versions", []):
            found[f"{spec['group']}/{ver['name']}/{names['plural']}"] = {
                "kind": names["kind"], "singular": names.get("singular", names["kind"].lower()),
                "shortnames": set(names.get("shortNames", [])), "namespaced": spec.get("scope") != "Cluster",
                "subresources": {"status"} if (ver.get("subresources") or {}).get("status") is not None else set(),
                "verbs": VERBS,
            }
    for plural, info in BUILTIN.items():
        found.setdefault(f"{GROUP}/{VERSION}/{plural}", {**info, "namespaced": True, "subresources": {"status"},
                                                          "verbs": VERBS})
    return found
