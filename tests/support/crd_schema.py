"""What a real API server would prune: fields of an object that its CRD's structural schema does
not declare. The emulator keeps them, so a test must ask; a status field missing from the schema
would silently vanish in a cluster."""

from __future__ import annotations

import yaml

from llama_operator.paths import crds_dir


def _schema(plural: str) -> dict:
    crd = yaml.safe_load((crds_dir() / f"{plural}.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def undeclared_fields(plural: str, obj: dict, part: str = "status") -> list[str]:
    found: list[str] = []

    def walk(value, schema: dict, path: str) -> None:
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        if isinstance(value, dict):
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                if props is not None and key in props:
                    walk(item, props[key], f"{path}.{key}")
                elif isinstance(extra, dict):
                    walk(item, extra, f"{path}.{key}")
                elif extra is not True:
                    found.append(f"{path}.{key}")
        elif isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                walk(item, schema["items"], f"{path}[{i}]")

    walk(obj.get(part) or {}, _schema(plural)["properties"][part], part)
    return found
