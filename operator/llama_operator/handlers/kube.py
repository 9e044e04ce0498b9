"""The operator's own Kubernetes calls, made outside kopf's patching: GET an object, update its
status (a merge patch guarded by the read's resourceVersion, never a blind one), post an Event.
Authenticated with the same ConnectionInfo kopf logged in with.

Every status write of both kinds (handlers, SQS events, resync) goes through `write_status`, so
an event that arrives while a handler runs, or a handler's view from before a fast state change,
never overwrites newer status. And the handlers' retry delay, `backoff`."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
import tempfile
import uuid

import aiohttp

from llama_operator.kinds import GROUP, VERSION


class KubeWriter:
    def __init__(self):
        self.info = None
        self._session: aiohttp.ClientSession | None = None

    def set(self, info) -> None:
        self.info = info

    def _ssl(self):
        info = self.info
        if not info.server.startswith("https"):
            return None
        if info.insecure:
            return False
        ctx = ssl.create_default_context(cafile=info.ca_path)
        if info.ca_data:
            ctx.load_verify_locations(cadata=info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data)
        cert, key = info.certificate_path, info.private_key_path
        if info.certificate_data and info.private_key_data:
            cert, key = _tmp(info.certificate_data), _tmp(info.private_key_data)
        if cert and key:
            ctx.load_cert_chain(cert, key)
        return ctx

    async def _http(self) -> aiohttp.ClientSession:
        if self.info is None:
            raise RuntimeError("not logged in to Kubernetes yet")
        if self._session is None or self._session.closed:
            headers = {"Accept": "application/json"}
            if self.info.token:
                headers["Authorization"] = f"{self.info.scheme or 'Bearer'} {self.info.token}"
            elif self.info.username and self.info.password:
                raw = base64.b64encode(f"{self.info.username}:{self.info.password}".encode()).decode()
                headers["Authorization"] = f"Basic {raw}"
            self._session = aiohttp.ClientSession(base_url=None, headers=headers,
                                                  connector=aiohttp.TCPConnector(ssl=self._ssl()),
                                                  timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, group_version: str, plural: str, namespace: str, name: str | None = None, sub: str = "") -> str:
        base = self.info.server.rstrip("/") + (f"/apis/{group_version}" if "/" in group_version else "/api/v1")
        url = f"{base}/namespaces/{namespace}/{plural}"
        return url + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    async def get(self, group_version: str, plural: str, namespace: str, name: str) -> dict | None:
        http = await self._http()
        async with http.get(self._url(group_version, plural, namespace, name)) as resp:
            if resp.status == 404:
                return None
            resp.raise_for_status()
            return await resp.json()

    async def update_status(self, group_version: str, plural: str, namespace: str, name: str, compute,
                            attempts: int = 8):
        """Read-modify-write of status with the read's resourceVersion as precondition: a writer
        that raced us (kopf's handler, another event) makes the API server answer 409, and we
        recompute from the fresh object, so no update is lost or applied over a newer one.
        `compute(obj)` returns the status values to merge, or None for nothing to write.
        Returns (object as read, values written) or (None, None) when the object is gone."""
        http = await self._http()
        for _ in range(attempts):
            obj = await self.get(group_version, plural, namespace, name)
            if obj is None:
                return None, None
            values = compute(obj)
            if not values:
                return obj, None
            body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": values}
            async with http.patch(self._url(group_version, plural, namespace, name, "status"), json=body,
                                  headers={"Content-Type": "application/merge-patch+json"}) as resp:
                if resp.status == 409:
                    continue
                if resp.status == 404:
                    return None, None
                resp.raise_for_status()
                return obj, values
        raise RuntimeError(f"status of {namespace}/{name} kept changing under {attempts} attempts to update it")

    async def post_event(self, obj: dict, type_: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"namespace": meta["namespace"], "name": f"{meta['name']}.{uuid.uuid4().hex[:12]}"},
            "involvedObject": {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": type_, "reason": reason[:128], "message": message[:1024],
            "source": {"component": "llama-operator"}, "reportingComponent": "llama-operator",
            "firstTimestamp": now, "lastTimestamp": now, "eventTime": None, "count": 1,
        }
        http = await self._http()
        async with http.post(self._url("v1", "events", meta["namespace"]), json=event) as resp:
            if resp.status >= 400 and resp.status not in (403, 404):  # events are best effort
                resp.raise_for_status()


async def write_status(kube: KubeWriter, plural: str, namespace: str, name: str, uid: str | None, change
                       ) -> tuple[dict | None, dict | None]:
    """Read-modify-write of one resource's status through `KubeWriter.update_status`: the read's
    resourceVersion is the precondition, so a writer that raced us (an SQS event, the resync, a
    handler) makes the API server answer 409 and `change` runs again on the fresh object.
    `change(status, meta)` maps status as it is now (not as a handler or an event saw it earlier)
    to the values to merge, {} or None for none; it does no I/O. Returns (object as read, values
    written); (None, None) when the object is gone or the name now holds another uid."""
    def compute(obj: dict) -> dict | None:
        meta = obj.get("metadata") or {}
        if uid and meta.get("uid") != uid:
            return None  # deleted and created again under the same name
        return change(dict(obj.get("status") or {}), meta) or None

    obj, written = await kube.update_status(f"{GROUP}/{VERSION}", plural, namespace, name, compute)
    if obj is None or (uid and obj.get("metadata", {}).get("uid") != uid):
        return None, None
    return obj, written


def _tmp(data) -> str:
    f = tempfile.NamedTemporaryFile(delete=False, suffix=".pem")
    f.write(data if isinstance(data, bytes) else data.encode())
    f.close()
    return f.name


MAX_RETRY_DELAY = 300.0


def backoff(first_seconds: float, retry: int) -> float:
    """The delay before retry `retry` (0 for the first) of a handler: doubling from
    `first_seconds`, at most five minutes. Both kinds retry AWS throttling and outages by it."""
    return min(first_seconds * 2 ** min(retry, 16), MAX_RETRY_DELAY)
