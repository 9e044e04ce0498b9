"""The CRDs as the tests read them, and the embedded API server's admission applied to a spec
alone (llama_operator.local.kubernetes.admission: defaults, the structural schema, CEL rules)."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import yaml

from llama_operator.local.kubernetes import admission
from llama_operator.paths import crds_dir


@lru_cache(maxsize=None)
def crd(kind: str) -> dict:
    return yaml.safe_load((Path(crds_dir()) / f"{kind}.yaml").read_text())


def root_schema(kind: str) -> dict:
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def spec_schema(kind: str) -> dict:
    return root_schema(kind)["properties"]["spec"]


def default(schema: dict, value: Any) -> Any:
    return admission.default(schema, copy.deepcopy(value))


def schema_errors(schema: dict, value: Any) -> list[str]:
    return [str(c) for c in admission.schema_causes(schema, value)]


def rules(schema: dict, path: tuple = ()) -> Iterator[tuple[tuple, dict]]:
    """(path, rule) for every x-kubernetes-validations entry under `properties`."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for key, sub in schema.get("properties", {}).items():
        yield from rules(sub, path + (key,))


def validate_spec(kind: str, spec: Any, old: Any = None) -> list[str]:
    """What `kubectl apply` of an object with this spec would be told: schema errors first, then
    (on a schema-valid object) the CEL rules' messages. Empty when accepted."""
    errors, cel = validate_spec_parts(kind, spec, old)
    return errors or cel


def validate_spec_parts(kind: str, spec: Any, old: Any = None) -> tuple[list[str], list[str]]:
    """(schema errors, CEL messages); CEL runs only on a schema-valid object."""
    schema = spec_schema(kind)
    spec = default(schema, spec)
    errors = schema_errors(schema, spec)
    if errors:
        return errors, []
    old = default(schema, old) if old is not None else None
    return [], [c.detail or c.message for c in admission.cel_causes(schema, spec, old)]


def validate_object(kind: str, obj: dict, old: dict | None = None) -> list[str]:
    """What the API server says to a create (`old` None) or an update of the whole object:
    [] when admitted, else each cause as `field: message`."""
    doc = crd(kind)
    version = doc["spec"]["versions"][0]
    schema = admission.Schema(doc["spec"]["names"]["kind"], doc["spec"]["group"], version["name"], root_schema(kind))
    try:
        admission.admit(schema, obj, old)
    except admission.Invalid as exc:
        return [str(c) for c in exc.causes]
    return []
