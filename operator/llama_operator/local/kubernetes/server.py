"""An embedded Kubernetes API for the no-cluster default: kmock's emulator, plus the server-side
behaviour kopf and kubectl rely on.

kmock 0.8 stores objects as the client sent them. What this module adds, and nothing more:
- registration of LlamaFinetune and LlamaEndpoint (read from `crds/` when present) plus
  `v1/namespaces` (kopf's namespace observer waits for it) and `v1/events`;
- server-filled metadata: namespace from the URL, uid, creationTimestamp, generation (bumped only
  when `spec` changes), resourceVersion (bumped on every write that changes the object; a no-op
  patch changes nothing and sends no watch event, as a real API server does);
- `kind`/`apiVersion` on list responses and on every stored object (kubectl refuses lists
  without them);
- the status subresource: a patch to `/status` changes only `status`; a patch to the object
  itself never changes `status`;
- finalizers: DELETE of an object with finalizers only sets deletionTimestamp; the object goes
  when its last finalizer is removed;
- PUT (replace) next to merge PATCH, and the JSON patch ops kopf sends (add/remove/replace/test);
- watches that start from the requested resourceVersion and send each change once.

`EmbeddedKubernetes` serves it on a free loopback port from a thread of its own and offers small
HTTP helpers (`apply`, `get`, `list`, `delete`) and a kubeconfig for kopf and kubectl.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import json
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import kmock
from kmock._internal import enums  # noqa: PLC2701 (the action enum is not re-exported under this name)

from llama_operator.kinds import ENDPOINT_KIND, ENDPOINTS, FINETUNE_KIND, FINETUNES, GROUP, VERSION

# Used when crds/ has no definition (yet): enough for discovery and routing.
_BUILTIN = {
    FINETUNES: {"kind": FINETUNE_KIND, "singular": "llamafinetune", "shortnames": {"lft"}},
    ENDPOINTS: {"kind": ENDPOINT_KIND, "singular": "llamaendpoint", "shortnames": {"lep"}},
}
_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
_SERVER_META = ("uid", "creationTimestamp", "resourceVersion", "generation", "deletionTimestamp")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _rv(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def json_patch(doc: Any, ops: list) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test), as kopf sends for finalizer lists."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")] if op["path"] else []
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1] if parts else None
        kind = op["op"]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise kmock.KubernetesError(status=422, reason="Invalid", message=f"test failed at {op['path']}")
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                idx = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(idx, copy.deepcopy(op["value"]))
                else:
                    parent[idx] = copy.deepcopy(op["value"])
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=f"unsupported JSON patch op {kind}")
    return doc


def crd_printer_columns(crds_dir: Path | None) -> dict[str, list[dict]]:
    """{plural: additionalPrinterColumns} of our CRDs, for server-side tables."""
    columns: dict[str, list[dict]] = {}
    if crds_dir and crds_dir.is_dir():
        import yaml

        for path in sorted(crds_dir.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    for ver in doc["spec"].get("versions", []):
                        columns[doc["spec"]["names"]["plural"]] = list(ver.get("additionalPrinterColumns", []))
    return columns


def as_table(objects: list[dict], columns: list[dict], resource_version: str) -> dict:
    """A meta.k8s.io/v1 Table, as the API server answers `kubectl get` (Accept: ...;as=Table):
    the CRD's printer columns, ages already human-readable as the server renders date columns."""
    from llama_operator.local.kubernetes.table import rows

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
    if crds_dir and crds_dir.is_dir():
        import yaml

        for path in sorted(crds_dir.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec, names = doc["spec"], doc["spec"]["names"]
                for ver in spec.get("versions", []):
                    found[f"{spec['group']}/{ver['name']}/{names['plural']}"] = {
                        "kind": names["kind"], "singular": names.get("singular", names["kind"].lower()),
                        "shortnames": set(names.get("shortNames", [])), "namespaced": spec.get("scope") != "Cluster",
                        "subresources": {"status"} if (ver.get("subresources") or {}).get("status") is not None else set(),
                        "verbs": _VERBS,
                    }
    for plural, info in _BUILTIN.items():
        found.setdefault(f"{GROUP}/{VERSION}/{plural}", {**info, "namespaced": True, "subresources": {"status"},
                                                          "verbs": _VERBS})
    return found


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the server-side semantics listed in the module docstring."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv = itertools.count(1)
        self._last_rv = 0
        self.printer_columns: dict[str, list[dict]] = {}

    async def _serve_version(self, request):
        # a subresource entry carries no short names, as on a real API server; kubectl warns that
        # `lft` is ambiguous otherwise
        listing = await super()._serve_version(request)
        for entry in listing.get("resources", []):
            if "/" in entry["name"]:
                entry["shortNames"], entry["singularName"], entry["categories"] = [], "", []
        return listing

    def _wants_table(self, request) -> bool:
        accept = next((v for k, v in (request.headers or {}).items() if k.lower() == "accept"), "")
        return "as=Table" in accept and request.resource.plural in self.printer_columns

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def _info(self, resource):
        for res in self.resources:
            if res == resource:
                return res, self.resources[res]
        raise kmock.KubernetesResourceNotFoundError()

    async def _handle(self, request):  # noqa: C901 (one dispatch over the verbs)
        if request.resource is None:
            return await super()._handle(request)
        method = str(request.method.value).upper()
        is_write = request.action in (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE) or (
            method == "PUT" and request.name)
        try:
            if request.action == enums.action.LIST and request.resource.plural:
                listing = await self._list(request)
                if self._wants_table(request):
                    listing = as_table(listing["items"], self.printer_columns[request.resource.plural],
                                       listing["metadata"]["resourceVersion"])
                return aiohttp.web.json_response(listing)
            if method == "GET" and request.name and self._wants_table(request) and request.subresource is None:
                listing = await self._list(request)
                found = [o for o in listing["items"] if o["metadata"]["name"] == request.name]
                if not found:
                    raise kmock.KubernetesObjectNotFoundError()
                return aiohttp.web.json_response(as_table(found, self.printer_columns[request.resource.plural],
                                                          listing["metadata"]["resourceVersion"]))
            if not is_write:
                return await super()._handle(request)
            async with self._lock:
                status, body, event = self._write(request, method)
                if event:
                    await self._buses[request.resource].put(event)
            return aiohttp.web.json_response(body, status=status)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)

    async def _serve_watch(self, request):
        """Watch from `resourceVersion`: objects newer than it first, then live events, each
        event at most once (kmock replays every object on connect, which made kopf act on a
        stale version right after a newer one)."""
        yield b""
        since = _rv(request.params.get("resourceVersion"))
        bus = self._buses[request.resource]
        async with self._lock:
            # Subscribe while writers are locked out: an event put between the snapshot and a later
            # subscription would be lost (two kopf peers then never saw each other's keep-alive).
            marker = await bus.mark()
            snapshot = self._last_rv
            replay = [{"type": "ADDED", "object": obj.raw} for (res, ns, _), obj in self._objects.items()
                      if res == request.resource and not obj.deleted
                      and (request.namespace is None or ns == request.namespace)
                      and (request.name is None or obj.raw.get("metadata", {}).get("name") == request.name)
                      and _rv(obj.raw.get("metadata", {}).get("resourceVersion")) > since]
        try:
            for event in replay:
                yield event
            floor = max(since, snapshot)
            async for event in bus.stream(since=marker):
                meta = event.get("object", {}).get("metadata", {})
                if _rv(meta.get("resourceVersion")) <= floor:
                    continue
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                if request.name is not None and meta.get("name") != request.name:
                    continue
                yield event
        finally:
            await bus.unmark(marker)

    async def _list(self, request) -> dict:
        resource, info = self._info(request.resource)
        async with self._lock:
            items = [obj.raw for (res, ns, _), obj in self._objects.items()
                     if res == resource and not obj.deleted and (request.namespace is None or ns == request.namespace)]
        api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
        return {"apiVersion": api_version, "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(self._last_rv)}, "items": items}

    def _write(self, request, method: str) -> tuple[int, dict, dict | None]:
        resource, info = self._info(request.resource)
        has_status = "status" in info.subresources
        data = request.data if isinstance(request.data, dict) else {}
        if request.action == enums.action.CREATE:
            return self._create(resource, info, request, data, has_status)
        key = (resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        stored = self._objects[key]
        old = copy.deepcopy(stored.raw)
        expected = (data.get("metadata") or {}).get("resourceVersion")
        if method in ("PATCH", "PUT") and expected and expected != old["metadata"].get("resourceVersion"):
            # optimistic concurrency, as the API server: a write based on an older read is refused
            raise kmock.KubernetesError(status=409, reason="Conflict",
                                        message=f"the object has been modified; resourceVersion {expected} is stale")
        if request.action == enums.action.DELETE:
            meta = old.get("metadata", {})
            if meta.get("finalizers"):
                if meta.get("deletionTimestamp"):
                    return 200, old, None
                new = merge_patch(old, {"metadata": {"deletionTimestamp": _now(), "resourceVersion": self._next_rv()}})
                stored.history.append(kmock.ObjectVersion(new))
                return 200, new, {"type": "MODIFIED", "object": new}
            old["metadata"]["resourceVersion"] = self._next_rv()
            stored.delete()
            return 200, old, {"type": "DELETED", "object": old}

        if request.subresource == "status":
            new_status = data.get("status")
            new = copy.deepcopy(old)
            if method == "PATCH" and isinstance(request.data, list):
                new = merge_patch(old, {"status": json_patch(old, request.data).get("status")})
            elif method == "PATCH":
                new = merge_patch(old, {"status": new_status}) if "status" in data else new
            else:
                new.pop("status", None)
                if new_status is not None:
                    new["status"] = new_status
        else:
            if method == "PATCH" and isinstance(request.data, list):
                new = json_patch(old, request.data)
                if has_status:
                    new.pop("status", None)
                    if "status" in old:
                        new["status"] = old["status"]
                for k in _SERVER_META:
                    if k in old.get("metadata", {}):
                        new["metadata"][k] = old["metadata"][k]
            elif method == "PATCH":
                patch = {k: v for k, v in data.items() if not (has_status and k == "status")}
                if isinstance(patch.get("metadata"), dict):
                    patch["metadata"] = {k: v for k, v in patch["metadata"].items() if k not in _SERVER_META}
                new = merge_patch(old, patch)
            else:  # PUT replaces all but status and the server's metadata
                new = copy.deepcopy(data)
                new_meta = new.setdefault("metadata", {})
                for k in _SERVER_META + ("name", "namespace"):
                    if k in old.get("metadata", {}):
                        new_meta[k] = old["metadata"][k]
                if has_status:
                    new.pop("status", None)
                    if "status" in old:
                        new["status"] = old["status"]
            if old.get("metadata", {}).get("deletionTimestamp"):
                # A real API server forbids new finalizers on an object being deleted.
                before = set(old["metadata"].get("finalizers", []))
                new["metadata"]["finalizers"] = [f for f in new["metadata"].get("finalizers", []) if f in before] or None
                if new["metadata"]["finalizers"] is None:
                    new["metadata"].pop("finalizers")
        if new == old:
            return 200, old, None
        if new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            stored.history.append(kmock.ObjectVersion(new))
            stored.delete()
            return 200, new, {"type": "DELETED", "object": new}
        stored.history.append(kmock.ObjectVersion(new))
        return 200, new, {"type": "MODIFIED", "object": new}

    def _create(self, resource, info, request, data, has_status) -> tuple[int, dict, dict]:
        obj = copy.deepcopy(data)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise kmock.KubernetesError(status=422, reason="Invalid", message="metadata.name: Required value")
        namespace = request.namespace or meta.get("namespace")
        if info.namespaced:
            if not namespace:
                raise kmock.KubernetesError(status=422, reason="Invalid",
                                            message="metadata.namespace: Required value for a namespaced resource")
            meta["namespace"] = namespace
        else:
            namespace = None
        key = (resource, namespace, meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise kmock.KubernetesError(status=409, reason="AlreadyExists",
                                        message=f'{resource.plural} "{meta["name"]}" already exists')
        for k in _SERVER_META:
            meta.pop(k, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1, resourceVersion=self._next_rv())
        obj["apiVersion"] = f"{resource.group}/{resource.version}" if resource.group else resource.version
        obj["kind"] = info.kind
        if has_status:
            obj.pop("status", None)
        if key in self._objects:
            self._objects[key].create(obj)
        else:
            self._objects[key] = obj
        return 201, obj, {"type": "ADDED", "object": obj}


class EmbeddedKubernetes:
    """The emulator on a free loopback port, served from a background thread.

        with EmbeddedKubernetes() as kube:
            kube.write_kubeconfig(path)
            kube.apply(manifest)
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, crds_dir: Path | None = None,
                 extra_resources: dict[str, dict] | None = None):
        self.host, self.port = host, port
        if crds_dir is None:
            from llama_operator import paths
            crds_dir = paths.crds_dir()
        self.crds_dir = crds_dir
        # more "group/version/plural" -> ResourceInfo kwargs (e.g. kopf's peering kind, or
        # apiextensions' CRDs), registered before the server answers its first request
        self.extra_resources = dict(extra_resources or {})
        self.url = ""
        self.emulator: Emulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> "EmbeddedKubernetes":
        self._thread = threading.Thread(target=self._serve, name="embedded-kubernetes", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error or not self.url:
            raise RuntimeError(f"the embedded Kubernetes API did not start: {self._error!r}")
        return self

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced to start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        emulator = self.emulator = Emulator()
        for key, info in crd_resources(self.crds_dir).items():
            emulator.resources[key] = info
        emulator.printer_columns = crd_printer_columns(self.crds_dir)
        emulator.resources["v1/namespaces"] = {"kind": "Namespace", "singular": "namespace", "namespaced": False,
                                               "verbs": _VERBS, "shortnames": {"ns"}}
        emulator.resources["v1/events"] = {"kind": "Event", "singular": "event", "namespaced": True,
                                           "verbs": _VERBS, "shortnames": {"ev"}}
        for key, info in self.extra_resources.items():
            emulator.resources[key] = info
        async with emulator:
            server = aiohttp.test_utils.RawTestServer(emulator, host=self.host, port=self.port or None)
            await server.start_server()
            try:
                self.port = server.port
                self.url = f"http://{self.host}:{server.port}"
                self._ready.set()
                await self._stop.wait()
            finally:
                await server.close()

    def stop(self) -> None:
        if self._loop and self._stop and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> "EmbeddedKubernetes":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def requests(self) -> list:
        """Every request served so far, oldest first: kmock records each one it parses
        (`kmock.Request`: method, url, params, headers, data; what it took them for: action,
        resource, namespace, name, subresource). A snapshot, safe to take while serving."""
        return list(self.emulator) if self.emulator is not None else []

    # clients -------------------------------------------------------------------------------
    def kubeconfig(self) -> dict:
        return {
            "apiVersion": "v1", "kind": "Config", "current-context": "embedded",
            "clusters": [{"name": "embedded", "cluster": {"server": self.url}}],
            "users": [{"name": "embedded", "user": {}}],
            "contexts": [{"name": "embedded", "context": {"cluster": "embedded", "user": "embedded",
                                                          "namespace": "default"}}],
        }

    def write_kubeconfig(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.kubeconfig(), indent=2))
        return path

    def _path(self, api_version: str, plural: str, namespace: str | None, name: str | None = None,
              subresource: str | None = None) -> str:
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        parts = [base] + (["namespaces", namespace] if namespace else []) + [plural]
        parts += [name] if name else []
        parts += [subresource] if subresource else []
        return "/".join(parts)

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def plural_of(self, api_version: str, kind: str) -> str:
        for key, info in crd_resources(self.crds_dir).items():
            if key.startswith(api_version + "/") and info["kind"] == kind:
                return key.rsplit("/", 1)[1]
        return kind.lower() + "s"

    def apply(self, obj: dict) -> dict:
        """Create the object, or merge-patch its spec, labels and annotations if it exists (what
        `kubectl apply` amounts to for these kinds)."""
        meta = obj["metadata"]
        ns = meta.get("namespace", "default")
        plural = self.plural_of(obj["apiVersion"], obj["kind"])
        code, body = self.request("POST", self._path(obj["apiVersion"], plural, ns), obj)
        if code == 409:
            patch = {"spec": obj.get("spec"), "metadata": {k: meta[k] for k in ("labels", "annotations") if k in meta}}
            code, body = self.request("PATCH", self._path(obj["apiVersion"], plural, ns, meta["name"]), patch,
                                      "application/merge-patch+json")
        if code >= 300:
            raise RuntimeError(f"apply {obj['kind']}/{meta['name']} failed ({code}): {body.get('message')}")
        return body

    def get(self, plural: str, namespace: str, name: str, api_version: str = f"{GROUP}/{VERSION}") -> dict | None:
        code, body = self.request("GET", self._path(api_version, plural, namespace, name))
        return body if code == 200 else None

    def list(self, plural: str, namespace: str | None = None, api_version: str = f"{GROUP}/{VERSION}") -> list[dict]:
        code, body = self.request("GET", self._path(api_version, plural, namespace))
        if code != 200:
            raise RuntimeError(f"list {plural} failed ({code}): {body}")
        return body["items"]

    def delete(self, plural: str, namespace: str, name: str, api_version: str = f"{GROUP}/{VERSION}") -> int:
        code, _ = self.request("DELETE", self._path(api_version, plural, namespace, name), {})
        return code
