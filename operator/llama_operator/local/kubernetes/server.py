"""`EmbeddedKubernetes`: the emulator served on a free loopback port from a thread of its own, with
small HTTP helpers (`apply`, `get`, `list`, `delete`) and a kubeconfig for kopf and kubectl."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp.test_utils

from llama_operator.kinds import GROUP, VERSION
from llama_operator.local.kubernetes.emulator import Emulator
from llama_operator.local.kubernetes.resources import CORE, crd_printer_columns, crd_resources, crd_schemas


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
        emulator.schemas = crd_schemas(self.crds_dir)
        for key, info in CORE.items():
            emulator.resources[key] = info
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
        """Every request served so far (the last `emulator.REQUEST_LOG`), oldest first: kmock parses each
        (`kmock.Request`: method, url, params, headers, data; what it took them for: action,
        resource, namespace, name, subresource). A snapshot, safe to take while serving."""
        return list(self.emulator.log) if self.emulator is not None else []

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
