"""`/openapi/v2` and `/openapi/v3` built from the CRDs, as the API server publishes them: kubectl
reads v3 to learn that the server takes `fieldValidation` (then it validates server-side) and
for `kubectl explain`. Only our kinds are described, and v2 only as JSON (not protobuf)."""

from __future__ import annotations

import copy
import hashlib
import json

from llama_operator.local.kubernetes.admission import Schema

_FIELD_VALIDATION = {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True},
                     "description": "Ignore, Warn or Strict: what to do with fields the schema does not declare"}
_METADATA = {"type": "object", "description": "Standard object's metadata: name, namespace, labels, annotations. "
             "More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}


def _definition_name(s: Schema) -> str:
    return ".".join(reversed(s.group.split("."))) + f".{s.version}.{s.kind}"


def _published(s: Schema) -> dict:
    body = copy.deepcopy(s.root)
    body.setdefault("properties", {})["metadata"] = _METADATA
    body["x-kubernetes-group-version-kind"] = [{"group": s.group, "version": s.version, "kind": s.kind}]
    return body


def _gvs(schemas: dict[str, Schema]) -> dict[str, dict[str, Schema]]:
    out: dict[str, dict[str, Schema]] = {}
    for plural, s in schemas.items():
        out.setdefault(f"apis/{s.group}/{s.version}", {})[plural] = s
    return out


def v3_document(group_version: dict[str, Schema]) -> dict:
    paths, components = {}, {}
    for plural, s in group_version.items():
        gvk = {"group": s.group, "version": s.version, "kind": s.kind}
        ref = {"$ref": f"#/components/schemas/{_definition_name(s)}"}
        body = {"content": {"application/json": {"schema": ref}}}
        write = {"parameters": [_FIELD_VALIDATION], "requestBody": body, "x-kubernetes-group-version-kind": gvk,
                 "responses": {"200": {"description": "OK", "content": body["content"]}}}
        base = f"/apis/{s.group}/{s.version}/namespaces/{{namespace}}/{plural}"
        paths[base] = {"post": write}
        paths[base + "/{name}"] = {"put": write, "patch": write,
                                   "get": {"x-kubernetes-group-version-kind": gvk,
                                           "responses": {"200": {"description": "OK", "content": body["content"]}}}}
        paths[base + "/{name}/status"] = {"put": write, "patch": write}
        components[_definition_name(s)] = _published(s)
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
            "components": {"schemas": components}}


def serve(path: str, accept: str, schemas: dict[str, Schema]) -> tuple[int, dict]:
    """(HTTP status, JSON body) for a GET of an /openapi path."""
    gvs = _gvs(schemas)
    if path.rstrip("/") == "/openapi/v3":
        listing = {}
        for gv, members in gvs.items():
            digest = hashlib.sha256(json.dumps(v3_document(members), sort_keys=True).encode()).hexdigest()[:32]
            listing[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest.upper()}"}
        return 200, {"paths": listing}
    if path.startswith("/openapi/v3/"):
        members = gvs.get(path[len("/openapi/v3/"):].strip("/"))
        if members is None:
            return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                         "message": f"the OpenAPI document for {path} was not found"}
        return 200, v3_document(members)
    if path.rstrip("/") == "/openapi/v2":
        if accept and "json" not in accept and "*/*" not in accept:
            return 406, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotAcceptable",
                         "code": 406, "message": "only application/json is served for /openapi/v2 here"}
        return 200, {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": {},
                     "definitions": {_definition_name(s): _published(s) for s in schemas.values()}}
    return 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                 "message": f"{path} not found"}
