"""Adapter inference components on the local SageMaker service: a LoRA adapter hosted on the copies
of a base inference component (components.py), as CreateInferenceComponent makes one with
Specification {"BaseInferenceComponentName": <base>, "Container": {"ArtifactUrl": "s3://.../x.tar.gz"}}.
`Adapters` is InferenceComponents' part for them (one worker thread per adapter); the base's copies
(copies.py) call `_join` for every new copy before it takes traffic.

What is emulated
----------------
* CreateInferenceComponent with BaseInferenceComponentName, refused (ValidationException) when the
  base does not exist, is on another endpoint, is itself an adapter or is not InService or
  Updating; when VariantName is given and is not the base's; when Container.ArtifactUrl is missing
  (or not an s3:// URI); and when the request has what an adapter does not take: ModelName,
  ComputeResourceRequirements (it uses the base's compute), RuntimeConfig (it has no copies),
  StartupParameters, Container.Image, Container.Environment, SchedulingConfig, DataCacheConfig,
  InstanceType.
* The artifact: a gzip-compressed tar in S3 (moto) holding the PEFT adapter (adapter_config.json and
  adapter_model.safetensors) at its top level or in one directory, downloaded and extracted under the
  component's folder of the state dir, refusing absolute names, names that climb out, and links.
* Registration: each running copy of the base gets `POST /adapters {"name": <adapter component>,
  "src": <the extracted directory>, "preload": true}` (200: done; 4xx/5xx with {"error": ...}:
  refused). Creating -> InService once every running copy has it; Failed, with a FailureReason that
  names the ArtifactUrl and the error, when the artifact is missing or not an adapter archive or a
  copy refuses it (the copies that took it unregister it). A base at 0 copies: InService at once.
* Every copy of the base that starts later (scale-out, wake from zero, a rolling update or its
  rollback, a restart) gets every adapter of the base before it takes traffic. A copy that refuses
  one fails as a copy that fails /ping does (stopped; the base's scaling rolls back to what runs, its
  rolling update rolls back), and the base's FailureReason says which adapter and why: the failure
  is the base's copy failing, the adapter keeps serving on the copies that have it.
* InvokeEndpoint naming an adapter goes to one of the base's copies that has it (the base's routing)
  with the header X-Amzn-SageMaker-Adapter-Identifier: <adapter component name>; it is counted in
  the base's invocations and concurrency (the adapter uses the base's copies, so their load is the
  base's to scale on). No copy of the base running: the base's no-capacity error, and one
  NoCapacityInvocationFailures datapoint for the base (the adapter has no copies to scale; what
  wakes the base from zero is the base's alarm). Copies running but none has the adapter yet (it is
  Creating or Updating) or any more (Failed): the same error, uncounted (no capacity is missing).
* UpdateInferenceComponent with a new Specification (Container.ArtifactUrl): Updating, the artifact
  downloaded again, then on every copy unregistered (`DELETE /adapters/<name>`) and registered
  again; InService, or Failed on any error (an adapter has no rollback: it is unregistered
  everywhere). DeploymentConfig, RuntimeConfig, another BaseInferenceComponentName and the fields
  creation refuses: ValidationException. UpdateInferenceComponentRuntimeConfig and Application Auto
  Scaling's RegisterScalableTarget on an adapter: ValidationException (it has no copies).
* DeleteInferenceComponent: Deleting, unregistered from every copy (best effort), its files removed,
  gone. Deleting a base while adapters other than Deleting ones name it: ValidationException.
* Describe: Specification {BaseInferenceComponentName, Container {ArtifactUrl}}, VariantName the
  base's, no RuntimeConfig. ListInferenceComponents lists adapters too.
* After a restart adapters come back (Updating, then InService) and go onto the base's new copies.

Where it differs from AWS
-------------------------
* AWS's behaviour is not documented for: deleting a base that still has adapters (here refused:
  stricter than AWS may be, never more forgiving), an adapter on a base that is Creating (refused
  here), which fields besides ComputeResourceRequirements an adapter may carry (the others are
  refused here rather than accepted and ignored), the status of an adapter whose base has no copies
  (InService here), and whether a new copy that refuses an adapter fails (here it does). Those
  choices are the service's own; so are the messages, in AWS's style.
* The artifact is checked here (gzip tar, the two files, no links); AWS leaves the check to the
  container. Only s3:// ArtifactUrls are read (AWS also takes https:// S3 URLs).
* Adapter invocations count towards the base's metrics, not the adapter's own (AWS publishes
  per-component metrics for adapters too; nothing scales on them).
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import shutil
import tarfile
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from llama_operator.local.sagemaker import s3io
from llama_operator.local.sagemaker.copies import KIND
from llama_operator.local.sagemaker.errors import ValidationError
from llama_operator.local.sagemaker.model_servers import DeployFailed, Server

log = logging.getLogger(__name__)

HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
REGISTER_TIMEOUT = 300   # seconds a copy may take to load an adapter (it waits for its requests in flight)
_ALLOWED_BASE = ("InService", "Updating")
# Specification fields an adapter does not take, and why (ModelName, ComputeResourceRequirements,
# StartupParameters and Container's Image and Environment are checked apart: their messages differ)
_NOT_FOR_ADAPTERS = {
    "SchedulingConfig": "it is placed with its base inference component's copies",
    "DataCacheConfig": "it has no copies of its own to cache data for",
    "InstanceType": "it runs on its base inference component's instances",
}


def is_adapter(record: dict | None) -> bool:
    return bool(((record or {}).get("spec") or {}).get("BaseInferenceComponentName"))


def base_of(record: dict) -> str:
    return record["spec"]["BaseInferenceComponentName"]


class AdapterRuntime:
    """An adapter component's worker: what is asked of it (kick), and whether it is going."""

    def __init__(self, name: str, base: str):
        self.name, self.base = name, base
        self.kick = threading.Event()
        self.deleting = False


class AdapterFailed(Exception):
    """Why an adapter cannot be served (its FailureReason)."""


def _describe_error(status: int, data: bytes) -> str:
    """A container's error answer in a line: its status and its JSON's "error", else its text."""
    text = data.decode("utf-8", "replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("error"):
        text = str(body["error"])
    return f"the container answered HTTP {status}: {text[:500] or '(no body)'}"


def _call(port: int, method: str, path: str, body: dict | None = None,
          timeout: float = REGISTER_TIMEOUT) -> tuple[int, bytes]:
    """(status, body) of a request to a copy; status 0 when it could not be reached."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}".encode()
    finally:
        conn.close()


def register(server: Server, name: str, src: str) -> str | None:
    """Registers the adapter on a copy; None, or why it was refused."""
    status, data = _call(server.port, "POST", "/adapters", {"name": name, "src": src, "preload": True})
    if status == 200:
        return None
    if status == 0:
        return f"the copy could not be reached ({data.decode(errors='replace')})"
    return _describe_error(status, data)


def unregister(server: Server, name: str) -> str | None:
    """Unregisters the adapter from a copy (not there: done); None, or why it failed."""
    status, data = _call(server.port, "DELETE", f"/adapters/{quote(name, safe='')}", timeout=60)
    if status in (200, 404):
        return None
    return _describe_error(status, data) if status else data.decode(errors="replace")


def _leaving(server: Server, wait: float = 2.0) -> bool:
    """Whether the copy is being stopped (drained or killed): its failures are not the adapter's."""
    deadline = time.monotonic() + wait
    while True:
        if server.retired or server.proc.poll() is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def adapter_dir(root: Path, names: list[str]) -> Path | None:
    """Where the adapter's two files are among the extracted members: the archive's top level, or
    its one directory."""
    files = set(names)
    if all(f in files for f in ADAPTER_FILES):
        return root
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1:
        (top,) = tops
        if all(f"{top}/{f}" in files for f in ADAPTER_FILES):
            return root / top
    return None


class Adapters:
    """InferenceComponents' part for adapter inference components (which provides ctx, lock,
    autoscaling, _rt, _adapters, _closing, _arn, _put, _updatable)."""

    # validation ----------------------------------------------------------------------------
    @staticmethod
    def _check_adapter_spec(spec: dict) -> str:
        """The ArtifactUrl of an adapter's Specification, or ValidationError for what an adapter
        does not take."""
        base = spec.get("BaseInferenceComponentName")
        what = f"an adapter inference component (BaseInferenceComponentName {base})"
        if spec.get("ModelName"):
            raise ValidationError(f"Specification.ModelName must not be specified for {what}: it runs with the "
                                  "model of its base inference component.")
        if spec.get("ComputeResourceRequirements"):
            raise ValidationError(f"Specification.ComputeResourceRequirements must not be specified for {what}: "
                                  "it uses the compute resources of its base inference component.")
        if spec.get("StartupParameters"):
            raise ValidationError(f"Specification.StartupParameters must not be specified for {what}: it starts "
                                  "no container of its own.")
        for field, why in _NOT_FOR_ADAPTERS.items():
            if spec.get(field):
                raise ValidationError(f"Specification.{field} must not be specified for {what}: {why}.")
        container = spec.get("Container") or {}
        for field in ("Image", "Environment"):
            if container.get(field):
                raise ValidationError(f"Specification.Container.{field} must not be specified for {what}: it runs "
                                      "in the container of its base inference component.")
        url = container.get("ArtifactUrl")
        if not url:
            raise ValidationError(f"Specification.Container.ArtifactUrl is required for {what}: the S3 location "
                                  "of the adapter's artifacts (a tar.gz of the LoRA adapter).")
        if not str(url).startswith("s3://"):
            raise ValidationError(f"Specification.Container.ArtifactUrl {url} is not supported by the local "
                                  "SageMaker service: give an s3:// URI of the adapter's tar.gz.")
        return url

    def _adapter_base(self, base: str, endpoint: str, endpoint_arn: str) -> dict:
        """The base inference component an adapter names, as creation needs it (under the lock)."""
        record = self.ctx.store.get(KIND, base)
        if record is None:
            raise ValidationError(f"Could not find base inference component \"{self._arn(base)}\".")
        d = record["describe"]
        if is_adapter(record):
            raise ValidationError(f"Inference component {base} is an adapter inference component: "
                                  "BaseInferenceComponentName must name an inference component that hosts a model.")
        if d["EndpointName"] != endpoint:
            raise ValidationError(f"Base inference component {base} is deployed on endpoint {d['EndpointName']}, "
                                  f"not on \"{endpoint_arn}\": an adapter inference component must be created on the "
                                  "endpoint of its base inference component.")
        status = d["InferenceComponentStatus"]
        if status not in _ALLOWED_BASE:
            raise ValidationError(f"Cannot create an adapter inference component on base inference component "
                                  f"\"{self._arn(base)}\" in status {status}: the base inference component must be "
                                  "InService.")
        return record

    # the API (called by components.py) ------------------------------------------------------
    def _create_adapter(self, name: str, p: dict, spec: dict, endpoint_record: dict) -> dict:
        """CreateInferenceComponent of an adapter (under the lock; the endpoint checked)."""
        if p.get("RuntimeConfig"):
            raise ValidationError(f"RuntimeConfig must not be specified for an adapter inference component "
                                  f"(BaseInferenceComponentName {spec['BaseInferenceComponentName']}): it has no "
                                  "copies of its own and runs on the copies of its base inference component.")
        self._check_adapter_spec(spec)
        endpoint = endpoint_record["describe"]["EndpointName"]
        base = self._adapter_base(spec["BaseInferenceComponentName"], endpoint,
                                  endpoint_record["describe"]["EndpointArn"])
        variant = base["describe"]["VariantName"]
        if p.get("VariantName") and p["VariantName"] != variant:
            raise ValidationError(f"Variant {p['VariantName']} is not the variant of base inference component "
                                  f"{base['name']} ({variant}): an adapter inference component runs on its base "
                                  "inference component's variant.")
        now = time.time()
        describe = {
            "InferenceComponentName": name, "InferenceComponentArn": self._arn(name),
            "EndpointName": endpoint, "EndpointArn": endpoint_record["describe"]["EndpointArn"],
            "VariantName": variant, "Specification": self._adapter_summary(spec),
            "CreationTime": now, "LastModifiedTime": now, "InferenceComponentStatus": "Creating",
        }
        self.ctx.store.put(KIND, {"name": name, "describe": describe, "tags": list(p.get("Tags") or []),
                                  "spec": spec, "version": 1})
        self._adapter_runtime(name, base["name"]).kick.set()
        return {"InferenceComponentArn": describe["InferenceComponentArn"]}

    @staticmethod
    def _adapter_summary(spec: dict) -> dict:
        """DescribeInferenceComponent's Specification of an adapter."""
        return {"BaseInferenceComponentName": spec["BaseInferenceComponentName"],
                "Container": {"ArtifactUrl": spec["Container"]["ArtifactUrl"]}}

    def _update_adapter(self, record: dict, p: dict) -> dict:
        """UpdateInferenceComponent of an adapter (under the lock)."""
        name, base = record["name"], base_of(record)
        if p.get("DeploymentConfig"):
            raise ValidationError(f"DeploymentConfig must not be specified for adapter inference component {name}: "
                                  "it has no copies to roll; an update registers the adapter again on the copies of "
                                  f"its base inference component {base}.")
        if p.get("RuntimeConfig"):
            raise ValidationError(f"RuntimeConfig must not be specified for adapter inference component {name}: it "
                                  f"has no copies of its own and runs on the copies of its base inference component "
                                  f"{base}.")
        spec = p.get("Specification")
        if not spec:
            raise ValidationError(f"Specify Specification (Container.ArtifactUrl) to update adapter inference "
                                  f"component {name}.")
        if spec.get("BaseInferenceComponentName") not in (None, base):
            raise ValidationError(f"The base inference component of adapter inference component {name} cannot change "
                                  f"({base} -> {spec['BaseInferenceComponentName']}): create another adapter "
                                  "inference component instead.")
        merged = {**record["spec"], **copy.deepcopy(spec), "BaseInferenceComponentName": base}
        self._check_adapter_spec(merged)
        record = self._updatable(name)
        record.update(spec=merged, version=record["version"] + 1)
        record["describe"]["Specification"] = self._adapter_summary(merged)
        self._put(record, InferenceComponentStatus="Updating", FailureReason=None)
        self._adapter_runtime(name, base).kick.set()
        return {"InferenceComponentArn": record["describe"]["InferenceComponentArn"]}

    def _delete_adapter(self, record: dict) -> None:
        """DeleteInferenceComponent of an adapter (under the lock)."""
        self._put(record, InferenceComponentStatus="Deleting")
        art = self._adapters.get(record["name"]) or self._adapter_runtime(record["name"], base_of(record))
        art.deleting = True
        art.kick.set()

    def _refuse_base_deletion(self, name: str) -> None:
        """A base inference component goes only once its adapters are gone or going. AWS does not
        document what it does; refusing may be stricter than AWS, never more forgiving."""
        users = sorted(r["name"] for r in self.ctx.store.all(KIND)
                       if is_adapter(r) and base_of(r) == name and r["describe"]["InferenceComponentStatus"] != "Deleting")
        if users:
            raise ValidationError(f"Cannot delete inference component \"{self._arn(name)}\" while adapter inference "
                                  f"components use it as their base ({', '.join(users)}). Delete the adapter inference "
                                  "components (DeleteInferenceComponent) first.")

    def _refuse_copies(self, record: dict) -> None:
        """What has copies (UpdateInferenceComponentRuntimeConfig, scalable targets) is not an adapter."""
        if is_adapter(record):
            raise ValidationError(f"Inference component {record['name']} is an adapter inference component: it has no "
                                  f"copies of its own and runs on the copies of its base inference component "
                                  f"{base_of(record)}. Change the copies of {base_of(record)} instead.")

    # the worker ----------------------------------------------------------------------------
    def _adapter_runtime(self, name: str, base: str) -> AdapterRuntime:
        art = self._adapters[name] = AdapterRuntime(name, base)
        threading.Thread(target=self._adapter_work, args=(art,), daemon=True, name=f"adapter-{name}").start()
        return art

    def _adapter_work(self, art: AdapterRuntime) -> None:
        self._work_loop(art, "adapter inference component", self._adapter_step, self._adapter_teardown,
                        self._adapter_settle)

    def _adapter_step(self, art: AdapterRuntime) -> None:
        with self.lock:
            record = self.ctx.store.get(KIND, art.name)
            if record is None or record["describe"]["InferenceComponentStatus"] in ("Deleting", "Failed"):
                return
            url, version = record["spec"]["Container"]["ArtifactUrl"], record["version"]
            rt = self._rt.get(art.base)
        try:
            src = self._unpack(art.name, url, version)
        except AdapterFailed as exc:
            self._adapter_drop(art, rt)
            return self._adapter_settle(art, str(exc))
        if rt is None:  # the base is gone (cannot be while the adapter exists): nothing to register on
            return self._adapter_settle(art, None)
        error = None
        with rt.adapter_lock:
            if art.deleting or art.kick.is_set():
                return  # deleted or updated again meanwhile: the next step does it
            rt.adapters[art.name] = (str(src), version, url)
            rt.hosts = [s for s in rt.hosts if s.proc.poll() is None]
            for server in list(rt.hosts):
                if server.adapters.get(art.name) == version:
                    continue  # a copy that joined since, with this version
                if art.name in server.adapters:  # its previous version: no request is routed to it from now
                    server.adapters.pop(art.name, None)
                    unregister(server, art.name)
                why = register(server, art.name, str(src))
                if why is None:
                    server.adapters[art.name] = version
                elif not _leaving(server):
                    error = (f"Failed to register the adapter from {url} on a copy of base inference component "
                             f"{art.base}: {why}")
                    break
            if error:
                self._unregister_everywhere(rt, art.name)
        if error is None:
            self._tidy_versions(art.name, version)
        self._adapter_settle(art, error)

    def _adapter_settle(self, art: AdapterRuntime, error: str | None) -> None:
        """After a step: InService, or Failed with why (unless more work is queued)."""
        with self.lock:
            record = self.ctx.store.get(KIND, art.name)
            if record is None or record["describe"]["InferenceComponentStatus"] == "Deleting" or art.kick.is_set():
                return
            if error:
                self._put(record, InferenceComponentStatus="Failed", FailureReason=error)
            else:
                self._put(record, InferenceComponentStatus="InService", FailureReason=None)

    def _adapter_drop(self, art: AdapterRuntime, rt) -> None:
        """The adapter serves nowhere from now on (Failed, or going)."""
        if rt is None:
            return
        with rt.adapter_lock:
            self._unregister_everywhere(rt, art.name)

    @staticmethod
    def _unregister_everywhere(rt, name: str) -> None:
        """Best effort, under the base's adapter lock: no copy keeps the adapter, no new copy gets it."""
        rt.adapters.pop(name, None)
        for server in list(rt.hosts):
            if name in server.adapters:
                server.adapters.pop(name, None)
                if server.proc.poll() is None:
                    why = unregister(server, name)
                    if why:
                        log.warning("adapter %s: unregistering from copy on port %d failed: %s", name, server.port, why)

    def _adapter_teardown(self, art: AdapterRuntime) -> None:
        self._adapter_drop(art, self._rt.get(art.base))
        shutil.rmtree(self.ctx.store.dir(KIND, art.name) / "adapter", ignore_errors=True)
        with self.lock:
            self.ctx.store.delete(KIND, art.name)
            self._adapters.pop(art.name, None)
            if self.autoscaling is not None:
                self.autoscaling.component_deleted(art.name)

    # the artifact --------------------------------------------------------------------------
    def _unpack(self, name: str, url: str, version: int) -> Path:
        """The adapter's directory of this version, downloaded and extracted once (kept across
        restarts); AdapterFailed says why it cannot be."""
        root = self.ctx.store.dir(KIND, name) / "adapter" / f"v{version}"
        marker = root.parent / f".v{version}.unpacked"
        if marker.is_file():
            return root / marker.read_text()
        shutil.rmtree(root, ignore_errors=True)
        archive = root.parent / f".v{version}.tar.gz"
        try:
            s3io.download_file(self.ctx.s3, url, archive)
        except (ClientError, BotoCoreError, s3io.ArchiveError, OSError) as exc:  # NoSuchKey, NoSuchBucket, no key
            raise AdapterFailed(f"Failed to download the adapter artifact {url}: {exc}") from None
        try:
            names = s3io.extract_tar_gz_strictly(archive, root)
        except s3io.ArchiveError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise AdapterFailed(f"The adapter artifact {url} cannot be extracted safely: {exc}.") from None
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise AdapterFailed(f"The adapter artifact {url} is not a gzip-compressed tar archive "
                                f"({type(exc).__name__}: {exc}).") from None
        finally:
            archive.unlink(missing_ok=True)
        where = adapter_dir(root, names)
        if where is None:
            shutil.rmtree(root, ignore_errors=True)
            found = ", ".join(sorted(names)[:10]) or "nothing"
            raise AdapterFailed(f"The adapter artifact {url} holds no LoRA adapter: {' and '.join(ADAPTER_FILES)} "
                                f"must be at the top level of the archive or in its one directory (found: {found}).")
        marker.write_text(where.relative_to(root).as_posix())
        return where

    def _tidy_versions(self, name: str, version: int) -> None:
        """Older versions' files go once this one is registered everywhere."""
        folder = self.ctx.store.dir(KIND, name) / "adapter"
        for path in folder.glob("v*"):
            if path.name != f"v{version}":
                shutil.rmtree(path, ignore_errors=True)
                (folder / f".{path.name}.unpacked").unlink(missing_ok=True)

    # what the base's copies and invocations ask ----------------------------------------------
    def _join(self, rt, server: Server) -> None:
        """A new copy of a base gets each of its adapters before it takes traffic; DeployFailed
        (the copy fails, as one that fails /ping) when it refuses one."""
        with rt.adapter_lock:
            rt.hosts = [s for s in rt.hosts if s.proc.poll() is None]
            for name, (src, version, url) in list(rt.adapters.items()):
                why = register(server, name, src)
                if why is not None:
                    raise DeployFailed(f"A new copy of inference component {rt.name} could not register adapter "
                                       f"inference component {name} (artifact {url}): {why}")
                server.adapters[name] = version
            rt.hosts.append(server)

    def _recover_adapters(self) -> None:
        """After a restart (under the lock, the bases' runtimes made): adapters come back and are
        registered on the bases' new copies; a deletion in progress finishes."""
        for record in self.ctx.store.all(KIND):
            if not is_adapter(record):
                continue
            art = self._adapter_runtime(record["name"], base_of(record))
            status = record["describe"]["InferenceComponentStatus"]
            if status == "Deleting":
                art.deleting = True
            elif status == "Failed":
                continue
            else:
                self._put(record, InferenceComponentStatus="Creating" if status == "Creating" else "Updating")
            art.kick.set()
