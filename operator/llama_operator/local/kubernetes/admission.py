"""What kube-apiserver does to a custom resource before it stores it, from the CRD as installed:
drop nulls the schema does not allow, prune unknown fields (or refuse them under
`fieldValidation=Strict`), fill defaults, validate the structural schema (jsonschema), the
`metadata.name` rules and the CEL `x-kubernetes-validations` (cel-python; transition rules with
`oldSelf` on updates, `messageExpression`, `reason`, `fieldPath`). A refusal is the API server's
422 Status with one cause per field.

Where this differs from the API server: messages follow its wording for the checks listed here
but not byte for byte everywhere; CEL cost limits are not applied, and ratcheting only for CEL
rules (a rule of an unchanged node is not re-run), not for the schema's own checks; CEL rules run
only on an object that passed the schema (the API server runs them beside schema errors of other
fields too)."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import celpy
import jsonschema

# metadata.name of a custom resource: a DNS subdomain (RFC 1123), as for most kinds
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_SUBDOMAIN_RE = re.compile(f"^{_SUBDOMAIN}$")
ROOT_FIELDS = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True)
class Cause:
    field: str
    reason: str      # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, ...
    message: str     # the part after the field, as the API server words it
    detail: str = ""  # a CEL rule's own message, without the API server's prefix

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass
class Invalid(Exception):
    """The object was refused: `status()` is the body the API server answers with."""
    kind: str
    group: str
    name: str
    causes: list[Cause]
    code: int = 422
    reason: str = "Invalid"
    text: str = field(default="")

    def message(self) -> str:
        if self.text:
            return self.text
        listed = [str(c) for c in self.causes]
        body = listed[0] if len(listed) == 1 else "[" + ", ".join(listed) + "]"
        return f'{self.kind}.{self.group} "{self.name}" is invalid: {body}'

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message(), "reason": self.reason, "code": self.code,
                "details": {"name": self.name, "group": self.group, "kind": self.kind,
                            "causes": [{"reason": c.reason, "message": c.message, "field": c.field}
                                       for c in self.causes]}}


@dataclass(frozen=True)
class Schema:
    """One CRD version's openAPIV3Schema and the names the API server's messages use."""
    kind: str
    group: str
    version: str
    root: dict


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return '"object"' if isinstance(value, dict) else '"array"'
    return json.dumps(value)


# ---- nulls, pruning, defaults ----------------------------------------------------------------

def _children(schema: dict, value: Any):
    """(key, child schema, child value) for a value's members the schema describes."""
    if isinstance(value, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for key in list(value):
            if props and key in props:
                yield key, props[key]
            elif isinstance(extra, dict):
                yield key, extra
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i in range(len(value)):
            yield i, schema["items"]


def prune(schema: dict, value: Any, path: str, unknown: list[str]) -> Any:
    """`value` without fields the schema does not declare (recorded in `unknown`) and without
    nulls where the schema is not nullable, as the API server stores it."""
    if isinstance(value, dict) and schema.get("type") == "object" and not schema.get(
            "x-kubernetes-preserve-unknown-fields"):
        declared = set(schema.get("properties", {}))
        if not isinstance(schema.get("additionalProperties"), dict) and not schema.get("additionalProperties"):
            for key in [k for k in value if k not in declared and not (path == "" and k in ROOT_FIELDS)]:
                unknown.append(f"{path}.{key}".lstrip("."))
                del value[key]
    for key, sub in list(_children(schema, value)):
        if path == "" and key in ROOT_FIELDS:  # metadata is the API server's own, not the CRD's
            continue
        here = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}".lstrip(".")
        if value[key] is None and not sub.get("nullable"):
            if isinstance(value, dict):
                del value[key]
            continue
        value[key] = prune(sub, value[key], here, unknown)
    return value


def default(schema: dict, value: Any) -> Any:
    """Missing properties with a default filled in (defaults themselves defaulted)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
    for key, sub in list(_children(schema, value)):
        value[key] = default(sub, value[key])
    return value


# ---- structural schema -----------------------------------------------------------------------

_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: Any) -> bool:
    if isinstance(value, str):
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out.lstrip(".")


def _cause(err: jsonschema.ValidationError) -> list[Cause]:
    where, v, arg, got = _path(err.absolute_path), err.validator, err.validator_value, err.instance
    shown = where or "<root>"
    if v == "required":
        return [Cause(f"{where}.{k}".lstrip("."), "FieldValueRequired", "Required value")
                for k in arg if isinstance(got, dict) and k not in got]
    if v == "enum":
        return [Cause(where, "FieldValueNotSupported",
                      f"Unsupported value: {_show(got)}: supported values: {', '.join(_show(a) for a in arg)}")]
    if v == "type":
        wanted = arg if isinstance(arg, str) else " or ".join(arg)
        return [Cause(where, "FieldValueTypeInvalid",
                      f"Invalid value: {_show(got)}: {shown} in body must be of type {wanted}: {_show(got)}")]
    if v == "maxLength":
        return [Cause(where, "FieldValueTooLong", f"Too long: may not be more than {arg} bytes")]
    if v == "maxItems":
        return [Cause(where, "FieldValueTooMany", f"Too many: {len(got)}: must have at most {arg} items")]
    detail = {
        "minimum": f"should be greater than or equal to {arg}",
        "maximum": f"should be less than or equal to {arg}",
        "pattern": f"should match '{arg}'",
        "minLength": f"should be at least {arg} chars long",
        "minItems": f"should have at least {arg} items",
        "maxProperties": f"should have at most {arg} properties",
        "minProperties": f"should have at least {arg} properties",
        "format": f"must be of type {arg}",
    }.get(v, err.message)
    return [Cause(where, "FieldValueInvalid", f"Invalid value: {_show(got)}: {shown} in body {detail}")]


def schema_causes(schema: dict, value: Any) -> list[Cause]:
    validator = jsonschema.Draft4Validator(schema, format_checker=_FORMATS)
    causes = [c for e in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
              for c in _cause(e)]
    return list(dict.fromkeys(causes))


def name_causes(meta: dict) -> list[Cause]:
    name = meta.get("name")
    if not name:
        return [Cause("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")]
    causes = []
    if len(name) > 253:
        causes.append(Cause("metadata.name", "FieldValueInvalid",
                            f"Invalid value: {_show(name)}: must be no more than 253 characters"))
    if not _SUBDOMAIN_RE.match(name):
        causes.append(Cause("metadata.name", "FieldValueInvalid", (
            f"Invalid value: {_show(name)}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
            f"regex used for validation is '{_SUBDOMAIN}')")))
    return causes


# ---- CEL -------------------------------------------------------------------------------------

_env = celpy.Environment()


@lru_cache(maxsize=None)
def _program(expression: str):
    return _env.program(_env.compile(expression))


def _rule_cause(rule: dict, where: str, here: Any, activation: dict) -> Cause | None:
    result = _program(rule["rule"]).evaluate(activation)
    if isinstance(result, Exception):
        return Cause(where.lstrip(".") or "<root>", "FieldValueInvalid",
                     f"Invalid value: {_show(here)}: {result.args[0] if result.args else result} "
                     f"evaluating rule: {rule['rule']}")
    if bool(result):
        return None
    message = rule.get("message") or f"failed rule: {rule['rule']}"
    if rule.get("messageExpression"):
        custom = _program(rule["messageExpression"]).evaluate(activation)
        if isinstance(custom, str) and custom.strip():
            message = str(custom)
    where = (f"{where}{rule['fieldPath']}" if rule.get("fieldPath") else where).lstrip(".") or "<root>"
    reason = rule.get("reason", "FieldValueInvalid")
    words = {"FieldValueForbidden": "Forbidden", "FieldValueRequired": "Required value",
             "FieldValueDuplicate": "Duplicate value"}
    text = f"{words[reason]}: {message}" if reason in words else f"Invalid value: {_show(here)}: {message}"
    return Cause(where, reason, text, message)


def cel_causes(schema: dict, value: Any, old: Any, where: str = "") -> list[Cause]:
    """The failing rules of every node of `value`; transition rules (naming oldSelf) only where an
    old value is there to compare with, as the API server does. Rules of a node whose value an
    update leaves unchanged are not evaluated again (the API server's validation ratcheting, on
    by default since Kubernetes 1.30), transition rules excepted: a status write does not re-run
    every rule of the spec."""
    causes = []
    unchanged = old is not None and value == old
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if (transition and old is None) or (unchanged and not transition):
            continue
        activation = {"self": celpy.json_to_cel(value)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        cause = _rule_cause(rule, where, value, activation)
        if cause:
            causes.append(cause)
    listed_map = schema.get("x-kubernetes-list-type") == "map"
    for key, sub in _children(schema, value):
        here = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"
        before = None
        if isinstance(value, dict) and isinstance(old, dict):
            before = old.get(key)
        elif listed_map and isinstance(old, list):  # list items correlate by their keys only
            keys = schema.get("x-kubernetes-list-map-keys", [])
            before = next((o for o in old if isinstance(o, dict)
                           and all(o.get(k) == value[key].get(k) for k in keys)), None)
        causes += cel_causes(sub, value[key], before, here)
    return causes


# ---- the whole write -------------------------------------------------------------------------

def admit(schema: Schema, obj: dict, old: dict | None = None, *, strict: bool = False) -> tuple[dict, list[str]]:
    """The object as the API server would store it and the warnings it would send back, or
    `Invalid`. `old`: the stored object on an update. `strict`: fieldValidation=Strict."""
    name = (obj.get("metadata") or {}).get("name", "")
    obj = copy.deepcopy(obj)
    unknown: list[str] = []
    obj = prune(schema.root, obj, "", unknown)
    if unknown and strict:
        raise Invalid(schema.kind, schema.group, name, [], code=400, reason="BadRequest", text=(
            f'{schema.kind} in version "{schema.version}" cannot be handled as a {schema.kind}: strict decoding error: '
            + ", ".join(f'unknown field "{u}"' for u in unknown)))
    obj = default(schema.root, obj)
    causes = (name_causes(obj.get("metadata") or {}) if old is None else []) + schema_causes(schema.root, obj)
    if not causes:
        # as stored: pruned and defaulted (the API server defaults on read too)
        stored = default(schema.root, prune(schema.root, copy.deepcopy(old), "", [])) if old is not None else None
        causes = cel_causes(schema.root, obj, stored)
    if causes:
        raise Invalid(schema.kind, schema.group, name, causes)
    return obj, [f'unknown field "{u}"' for u in unknown]
