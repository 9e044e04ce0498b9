"""`llama-operator demo --scaling`: after the main demo's fine-tune, one more endpoint serving the
model it produced with `spec.scaling` (`manifests/examples/endpoint-scaling-local.yaml`, model.s3Uri
pointed at its status.modelS3Uri as a user would copy it). Once the operator has registered it with
Application Auto Scaling, a few threads send requests until the local service has started a second
model server, then stop; idle, the endpoint goes back to one. Every change of the INSTANCES and
DESIRED columns and the ScaledOut / ScaledIn Events are printed as they come. The demo's local
service runs one metric period a second (PERIOD), so this takes about half a minute instead of
twenty. The endpoint is deleted again before it returns, whatever happened."""

from __future__ import annotations

import json
import threading
import time

import yaml

from llama_operator import paths
from llama_operator.local.kubernetes.table import printer_columns, render, rows

EXAMPLE = "endpoint-scaling-local.yaml"
PERIOD = 1.0                 # the local service's --autoscaling-period while the demo runs with --scaling
LOAD_THREADS = 3             # clients sending requests one after another
LOAD_PAUSE = 0.25            # seconds each waits between its requests (about 10 requests/s in all)
LOAD_TOKENS = 8              # short answers: the point is the request rate, not the text
SCALE_OUT_SECONDS = 150      # load for at most this long (3 periods above target, then a server to start)
SCALE_IN_SECONDS = 120       # then wait at most this long (15 periods below target, then one drained)
GONE_SECONDS = 120
PLURAL = "llamaendpoints"


def _doc(model_uri: str) -> dict:
    doc = yaml.safe_load((paths.manifests_dir() / "examples" / EXAMPLE).read_text())
    doc["spec"]["model"] = {"s3Uri": model_uri}
    return doc


class Load:
    """LOAD_THREADS clients calling InvokeEndpoint one request after another until stopped."""

    def __init__(self, stack, endpoint: str, prompts: list[str]):
        self.stack, self.endpoint, self.prompts = stack, endpoint, prompts or ["Hello"]
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.sent = self.failed = 0
        self.last_error = ""
        self.threads: list[threading.Thread] = []
        self.started = self.stopped = 0.0

    def _client(self, index: int) -> None:
        runtime = self.stack.client("sagemaker-runtime")
        i = index
        while not self.stop_event.is_set():
            body = json.dumps({"inputs": self.prompts[i % len(self.prompts)],
                               "parameters": {"max_new_tokens": LOAD_TOKENS, "do_sample": True}})
            i += LOAD_THREADS
            try:
                out = runtime.invoke_endpoint(EndpointName=self.endpoint, Body=body, ContentType="application/json",
                                              Accept="application/json")
                out["Body"].read()
                ok = True
            except Exception as exc:  # noqa: BLE001 (counted and shown; the load goes on)
                ok, error = False, f"{type(exc).__name__}: {exc}"
            with self.lock:
                self.sent += 1
                if not ok:
                    self.failed += 1
                    self.last_error = error
            self.stop_event.wait(LOAD_PAUSE)

    def start(self) -> Load:
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True, name=f"demo-load-{i}")
                        for i in range(LOAD_THREADS)]
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        if not self.threads or self.stop_event.is_set():
            return
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)
        self.stopped = time.monotonic()

    def summary(self) -> str:
        seconds = (self.stopped or time.monotonic()) - self.started
        text = f"{self.sent} requests in {seconds:.0f}s ({self.sent / max(seconds, 1e-9):.1f}/s)"
        if self.failed:
            text += f", {self.failed} failed (last: {self.last_error[:160]})"
        return text


class Watch:
    """Polls the LlamaEndpoint and its Events; says each phase change, each change of the INSTANCES
    and DESIRED columns, and each autoscaling Event, once."""

    def __init__(self, kube, namespace: str, name: str, say):
        self.kube, self.namespace, self.name, self.say = kube, namespace, name, say
        self.phase: str | None = None
        self.instances: tuple | None = None      # instances and copies, current and desired
        self.events_seen: set[str] = set()
        self.messages: dict[str, list[str]] = {}   # Event reason -> messages, in order
        self.last: dict = {}                        # the last object seen

    def status(self) -> dict:
        return self.last.get("status") or {}

    def poll(self) -> dict:
        obj = self.kube.get(PLURAL, self.namespace, self.name)
        if obj is None:
            return {}
        self.last = obj
        st = obj.get("status") or {}
        if st.get("phase") and st["phase"] != self.phase:
            self.phase = st["phase"]
            extra = st.get("failureReason") or ""
            self.say(f"LlamaEndpoint/{self.name}: {self.phase}" + (f": {extra}" if extra else ""))
        inst = st.get("instances") or {}
        copies = (st.get("inferenceComponent") or {}).get("copies") or {}
        now = (inst.get("current"), inst.get("desired"), copies.get("current"), copies.get("desired"))
        if inst and now != self.instances:
            self.instances = now
            extra = f"   COPIES {now[2]} (desired {now[3]})" if copies else ""
            self.say(f"    INSTANCES {now[0]}   DESIRED {now[1]}{extra}   ({st.get('phase')})")
        for event in self.kube.list("events", self.namespace, api_version="v1"):
            key = event["metadata"]["name"]
            if (event.get("involvedObject") or {}).get("name") != self.name or key in self.events_seen:
                continue
            self.events_seen.add(key)
            reason = event.get("reason", "")
            if reason in ("AutoscalingApplied", "ScaledOut", "ScaledIn", "AutoscalingRemoved", "ScalingFailed"):
                self.messages.setdefault(reason, []).append(event.get("message", ""))
                self.say(f"    Event {event.get('type')} {reason}: {event.get('message', '')}")
        return st

    def until(self, done, seconds: float, stop=None) -> dict | None:
        """Polls until done(status) is true (the status), or the endpoint fails or `seconds`
        pass (None). stop(): an extra reason to give up (e.g. the operator exited)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            st = self.poll()
            if done(st):
                return st
            if st.get("phase") in ("Failed", "Degraded") or (stop is not None and stop()):
                return None
            time.sleep(0.5)
        return None


def _table(obj: dict, wide: bool = False) -> str:
    crd = yaml.safe_load((paths.crds_dir() / f"{PLURAL}.yaml").read_text())
    return render(rows([obj], printer_columns(crd, wide=wide)))


def _current(st: dict) -> int | None:
    return (st.get("instances") or {}).get("current")


def _settled_at(count: int):
    """InService with `count` instances serving and no other count asked for."""
    return lambda st: st.get("phase") == "InService" and st.get("instances") == {"current": count, "desired": count}


def run(kube, stack, namespace: str, model_uri: str, prompts: list[str], timeout: float, say,
        operator=None) -> tuple[bool, dict]:
    """(whether the endpoint scaled out under load and back in once idle, and was deleted with no
    scalable target left; its last status with the SageMaker names it had, for the caller's check
    that nothing of it is left). `operator`: its process, to stop waiting should it exit."""
    started = time.monotonic()
    doc = _doc(model_uri)
    name = doc["metadata"]["name"]
    watch = Watch(kube, namespace, name, say)
    loads: list[Load] = []
    ok = False
    kube.apply(doc)
    try:
        ok = _exercise(watch, stack, doc, prompts, timeout, say, operator, loads)
    finally:
        for load in loads:
            load.stop()
        ep_status = watch.status()
        deleted = _delete(kube, stack, namespace, name, ep_status, say)
        say(f"scaling part {'finished' if ok and deleted else 'FAILED'} in {time.monotonic() - started:.0f}s")
    return ok and deleted, ep_status


def _exercise(watch: Watch, stack, doc: dict, prompts: list[str], timeout: float, say, operator,
              loads: list) -> bool:
    name, sc = doc["metadata"]["name"], doc["spec"]["scaling"]
    low, high = sc["minInstances"], sc["maxInstances"]
    stopped = (lambda: operator.poll() is not None) if operator is not None else None
    say(f"applied LlamaEndpoint/{name}: {low} to {high} instances at {sc['target']['invocationsPerInstance']} "
        f"invocations a minute per instance (a metric period lasts {PERIOD:g}s here, not a minute)")
    st = watch.until(lambda s: s.get("phase") == "InService" and (s.get("scaling") or {}).get("appliedHash"),
                     timeout, stopped)
    if st is None:
        say(f"the scaling endpoint did not get ready with autoscaling applied: {watch.phase} "
            f"{watch.status().get('failureReason') or ''}".rstrip())
        return False
    print(_table(watch.last), flush=True)
    start_count = _current(st) or low

    load = Load(stack, st["endpointName"], prompts)
    loads.append(load)
    load.start()
    say(f"sending requests from {LOAD_THREADS} threads until {high} instances serve")
    st = watch.until(lambda s: s.get("phase") == "InService" and (_current(s) or 0) >= high,
                     SCALE_OUT_SECONDS, stopped)
    load.stop()
    say("load stopped: " + load.summary())
    if st is None:
        say(f"the endpoint did not scale out to {high} instances in {SCALE_OUT_SECONDS}s under load")
        return False
    watch.until(lambda s: watch.messages.get("ScaledOut"), 10)  # the Event follows the status
    say(f"scaled out: {start_count} -> {_current(st)} instances, {load.stopped - load.started:.0f}s after the "
        "load began")
    print(_table(watch.last), flush=True)

    quiet = time.monotonic()
    st = watch.until(_settled_at(low), SCALE_IN_SECONDS, stopped)
    if st is None:
        say(f"the idle endpoint did not scale in to {low} instance(s) in {SCALE_IN_SECONDS}s")
        return False
    watch.until(lambda s: watch.messages.get("ScaledIn"), 10)
    say(f"scaled in: {high} -> {_current(st)} instances, {time.monotonic() - quiet:.0f}s after the load stopped")
    print(_table(watch.last), flush=True)
    activity = (watch.status().get("scaling") or {}).get("lastActivity") or {}
    if activity:
        say(f"status.scaling.lastActivity: {activity.get('status')}: {activity.get('description')}")
    missing = [r for r in ("ScaledOut", "ScaledIn") if not watch.messages.get(r)]
    if missing:
        say("no Event posted for: " + ", ".join(missing))
    return not missing


def delete_resource(kube, namespace: str, name: str, say) -> bool:
    """Deletes the LlamaEndpoint; whether it is gone (its finalizer done) within GONE_SECONDS."""
    kube.delete(PLURAL, namespace, name)
    gone_by = time.monotonic() + GONE_SECONDS
    while time.monotonic() < gone_by and kube.get(PLURAL, namespace, name):
        time.sleep(1)
    if kube.get(PLURAL, namespace, name):
        say(f"LlamaEndpoint/{name} was not gone {GONE_SECONDS}s after its deletion")
        return False
    return True


def _delete(kube, stack, namespace: str, name: str, ep_status: dict, say) -> bool:
    """Deletes the endpoint and waits until the resource is gone; True when it is and no scalable
    target of it is left registered."""
    if not delete_resource(kube, namespace, name, say):
        return False
    resource = (ep_status.get("scaling") or {}).get("resourceId")
    left = []
    if resource:
        aas = stack.client("application-autoscaling")
        left = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])["ScalableTargets"]
    say(f"deleted LlamaEndpoint/{name}; scalable targets left: " + (", ".join(t["ResourceId"] for t in left) or "none"))
    return not left
