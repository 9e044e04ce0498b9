"""Offline stand-in for the API server's validation of our CRDs: structural defaulting, the
OpenAPI schema (jsonschema, draft 4 semantics as in Kubernetes) and the CEL rules (cel-python)."""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import celpy
import jsonschema
import yaml

from llama_operator.paths import crds_dir


@lru_cache(maxsize=None)
def crd(kind: str) -> dict:
    return yaml.safe_load((Path(crds_dir()) / f"{kind}.yaml").read_text())


def root_schema(kind: str) -> dict:
    return crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def spec_schema(kind: str) -> dict:
    return root_schema(kind)["properties"]["spec"]


def default(schema: dict, value: Any) -> Any:
    """Structural defaulting as the API server does it: missing properties with a default are
    filled (recursively, defaults themselves defaulted)."""
    value = copy.deepcopy(value)
    if isinstance(value, dict) and schema.get("type") == "object":
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = default(sub, value[key])
    if isinstance(value, list) and "items" in schema:
        value = [default(schema["items"], v) for v in value]
    return value


def schema_errors(schema: dict, value: Any) -> list[str]:
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(value)]


def rules(schema: dict, path: tuple = ()) -> Iterator[tuple[tuple, dict]]:
    """(path, rule) for every x-kubernetes-validations entry."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for key, sub in schema.get("properties", {}).items():
        yield from rules(sub, path + (key,))


_env = celpy.Environment()


@lru_cache(maxsize=None)
def _program(rule: str):
    return _env.program(_env.compile(rule))


def _at(value: Any, path: tuple) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def cel_errors(schema: dict, value: Any, old: Any = None) -> list[str]:
    """Messages of the rules that fail. Transition rules (those naming oldSelf) run only on
    updates, and only where the old object has the field, as in Kubernetes."""
    failed = []
    for path, rule in rules(schema):
        here = _at(value, path)
        if here is None:
            continue
        activation = {"self": celpy.json_to_cel(here)}
        if "oldSelf" in rule["rule"]:
            before = _at(old, path) if old is not None else None
            if before is None:
                continue
            activation["oldSelf"] = celpy.json_to_cel(before)
        result = _program(rule["rule"]).evaluate(activation)
        if isinstance(result, Exception) or not bool(result):
            failed.append(rule["message"])
    return failed


def validate_spec(kind: str, spec: Any, old: Any = None) -> list[str]:
    """What `kubectl apply` of an object with this spec would be told: schema errors first, then
    (on a schema-valid object) the CEL messages. Empty when accepted."""
    errors, cel = validate_spec_parts(kind, spec, old)
    return errors or cel


def validate_spec_parts(kind: str, spec: Any, old: Any = None) -> tuple[list[str], list[str]]:
    """(schema errors, CEL messages); CEL runs only on a schema-valid object, as in Kubernetes."""
    schema = spec_schema(kind)
    spec = default(schema, spec)
    errors = schema_errors(schema, spec)
    if errors:
        return errors, []
    old = default(schema, old) if old is not None else None
    return [], cel_errors(schema, spec, old)
