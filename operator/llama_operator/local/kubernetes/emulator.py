"""kmock's emulator with the server-side behaviour kopf and kubectl rely on.

kmock 0.8 stores objects as the client sent them. What this adds, and nothing more:
- registration of LlamaFinetune and LlamaEndpoint (read from `crds/` when present) plus
  `v1/namespaces` (kopf's namespace observer waits for it) and `v1/events` (`resources`);
- server-filled metadata: namespace from the URL, uid, creationTimestamp, generation (bumped only
  when `spec` changes), resourceVersion (bumped on every write that changes the object; a no-op
  patch changes nothing and sends no watch event, as a real API server does);
- `kind`/`apiVersion` on list responses and on every stored object (kubectl refuses lists
  without them);
- the status subresource: a patch to `/status` changes only `status`; a patch to the object
  itself never changes `status` (`objects`);
- finalizers: DELETE of an object with finalizers only sets deletionTimestamp; the object goes
  when its last finalizer is removed;
- PUT (replace) next to merge PATCH, and the JSON patch ops kopf sends (add/remove/replace/test);
- watches that start from the requested resourceVersion and send each change once;
- server-side tables of the CRDs' printer columns for `kubectl get`.
"""

from __future__ import annotations

import collections
import copy
import itertools
import uuid

import aiohttp.web
import kmock
from kmock._internal import enums  # noqa: PLC2701 (the action enum is not re-exported under this name)

from llama_operator.local.kubernetes import openapi
from llama_operator.local.kubernetes.admission import Invalid, Schema, admit
from llama_operator.local.kubernetes.objects import SERVER_META, merge_patch, now, rv, written
from llama_operator.local.kubernetes.resources import as_table

# custom resources take no strategic merge patch, as on a real API server
_CR_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")
# requests kept for `EmbeddedKubernetes.requests()`, newest last
REQUEST_LOG = 50_000


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the server-side semantics listed in the module docstring."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv = itertools.count(1)
        self._last_rv = 0
        self.printer_columns: dict[str, list[dict]] = {}
        self.schemas: dict[str, Schema] = {}   # plural -> the CRD's schema, for admission
        self.log: collections.deque = collections.deque(maxlen=REQUEST_LOG)
        self._in_flight: set[int] = set()

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

    def _header(self, request, name: str) -> str:
        return next((v for k, v in (request.headers or {}).items() if k.lower() == name), "")

    async def _handle(self, request):
        # kmock keeps every request it served and matches each new one to its reactions by
        # scanning them all: quadratic over a long run (a 1,000-resource run spent 80% of its time
        # there). Its list keeps only the requests in flight; `log` keeps the history.
        self.log.append(request)
        self._in_flight.add(id(request))
        try:
            return await self._dispatch(request)
        finally:
            self._in_flight.discard(id(request))
            self._requests[:] = [r for r in self._requests if id(r) in self._in_flight]

    async def _dispatch(self, request):  # noqa: C901 (one dispatch over the verbs)
        if request.url.path.startswith("/openapi/"):
            found = openapi.serve(request.url.path, self._header(request, "accept"), self.schemas)
            return aiohttp.web.json_response(found[1], status=found[0])
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
            content_type = self._header(request, "content-type").split(";")[0].strip()
            if method == "PATCH" and request.resource.plural in self.schemas and content_type not in _CR_PATCH_TYPES:
                raise kmock.KubernetesError(status=415, reason="UnsupportedMediaType", message=(
                    "the body of the request was in an unknown format - accepted media types include: "
                    + ", ".join(_CR_PATCH_TYPES)))
            async with self._lock:
                status, body, event, warnings = self._write(request, method)
                if event:
                    await self._buses[request.resource].put(event)
            headers = {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)} if warnings else None
            return aiohttp.web.json_response(body, status=status, headers=headers)
        except Invalid as exc:
            return aiohttp.web.json_response(exc.status(), status=exc.code)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)

    def _admit(self, request, obj: dict, old: dict | None) -> tuple[dict, list[str]]:
        schema = self.schemas.get(request.resource.plural)
        if schema is None:
            return obj, []
        return admit(schema, obj, old, strict=request.params.get("fieldValidation") == "Strict")

    async def _serve_watch(self, request):
        """Watch from `resourceVersion`: objects newer than it first, then live events, each
        event at most once (kmock replays every object on connect, which made kopf act on a
        stale version right after a newer one)."""
        yield b""
        since = rv(request.params.get("resourceVersion"))
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
                      and rv(obj.raw.get("metadata", {}).get("resourceVersion")) > since]
        try:
            for event in replay:
                yield event
            floor = max(since, snapshot)
            async for event in bus.stream(since=marker):
                meta = event.get("object", {}).get("metadata", {})
                if rv(meta.get("resourceVersion")) <= floor:
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

    def _write(self, request, method: str) -> tuple[int, dict, dict | None, list[str]]:
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
                    return 200, old, None, []
                new = merge_patch(old, {"metadata": {"deletionTimestamp": now(), "resourceVersion": self._next_rv()}})
                stored.history.append(kmock.ObjectVersion(new))
                return 200, new, {"type": "MODIFIED", "object": new}, []
            old["metadata"]["resourceVersion"] = self._next_rv()
            stored.delete()
            return 200, old, {"type": "DELETED", "object": old}, []

        new, warnings = self._admit(request, written(old, request.data, method, request.subresource, has_status), old)
        if new == old:
            return 200, old, None, warnings
        if new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        new["metadata"]["resourceVersion"] = self._next_rv()
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            stored.history.append(kmock.ObjectVersion(new))
            stored.delete()
            return 200, new, {"type": "DELETED", "object": new}, warnings
        stored.history.append(kmock.ObjectVersion(new))
        return 200, new, {"type": "MODIFIED", "object": new}, warnings

    def _create(self, resource, info, request, data, has_status) -> tuple[int, dict, dict, list[str]]:
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
        for k in SERVER_META:
            meta.pop(k, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1, resourceVersion=self._next_rv())
        obj["apiVersion"] = f"{resource.group}/{resource.version}" if resource.group else resource.version
        obj["kind"] = info.kind
        if has_status:
            obj.pop("status", None)
        obj, warnings = self._admit(request, obj, None)
        if key in self._objects:
            self._objects[key].create(obj)
        else:
            self._objects[key] = obj
        return 201, obj, {"type": "ADDED", "object": obj}, warnings
