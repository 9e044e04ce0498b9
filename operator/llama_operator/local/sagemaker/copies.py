"""The copies of inference components (components.py): one worker thread per component starts and
stops its copies (local model servers, model_servers), places them on its variant's instances
(placement.py, through the pools components.py keeps), rolls a new specification out in batches and
back on failure, and settles the component's status. `Copies` is InferenceComponents' half that runs
in those threads; everything that touches state holds the service's lock, nothing that waits for a
process does."""

from __future__ import annotations

import collections
import logging
import threading
import time

from llama_operator.local.sagemaker.errors import ValidationError
from llama_operator.local.sagemaker.model_servers import (
    DEFAULT_HEALTH_TIMEOUT,
    DeployFailed,
    Server,
    Variant,
    kill_group,
    wait_healthy,
)
from llama_operator.local.sagemaker.placement import Need, Slot

log = logging.getLogger(__name__)

KIND = "inference-component"


def truncate(text: str) -> str:
    return text if len(text) <= 1024 else text[:1021] + "..."


class Runtime:
    """A component's live state: its serving copies (a model_servers.Variant of the current
    specification), where each runs, what is asked of it, and its load."""

    def __init__(self, name: str, endpoint: str, variant: str, need: Need):
        self.name, self.endpoint, self.variant, self.need = name, endpoint, variant, need
        self.copies = Variant("copies", 1.0)
        self.slots: dict[int, Slot] = {}          # server port -> its place
        self.desired = 0
        self.pending_spec: tuple | None = None    # (Specification, container, DeploymentConfig) to roll out
        self.deleting = False
        self.recovering = False
        self.starting: list[Server] = []
        self.waiters: list = []                   # on_done(ok, message) of runtime-config changes
        self.kick = threading.Event()
        self.count_lock = threading.Lock()
        self.invocations = 0
        self.inflight = 0
        self.busy = 0.0                           # seconds of in-flight requests, integrated
        self.since = time.monotonic()
        self.failures: collections.deque = collections.deque(maxlen=10000)  # NoCapacity, monotonic times
        # adapter inference components on this one (adapters.py): `adapter_lock` serialises every
        # registration on its copies; under it, `adapters` (name -> (adapter directory, version,
        # ArtifactUrl)) is what each new copy gets before it takes traffic, and `hosts` the copies that
        # got them (serving, about to serve, or draining).
        self.adapter_lock = threading.Lock()
        self.adapters: dict[str, tuple[str, int, str]] = {}
        self.hosts: list[Server] = []

    def begin(self) -> None:
        with self.count_lock:
            self._flush()
            self.inflight += 1
            self.invocations += 1

    def end(self) -> None:
        with self.count_lock:
            self._flush()
            self.inflight -= 1

    def _flush(self) -> None:
        now = time.monotonic()
        self.busy += self.inflight * (now - self.since)
        self.since = now


class Copies:
    """The lifecycle half of InferenceComponents (which provides ctx, lock, endpoints, autoscaling,
    _rt, _closing, time_scale, and the pool helpers _pool, _scaling, _may_add, _publish, _tidy,
    _kick_pool, and _need, _summary, _put; adapters.Adapters provides _join and _recover_adapters)."""

    def _runtime(self, name: str, endpoint: str, variant: str, need: Need) -> Runtime:
        rt = self._rt[name] = Runtime(name, endpoint, variant, need)
        threading.Thread(target=self._work, args=(rt,), daemon=True, name=f"ic-{name}").start()
        return rt

    def _work(self, rt: Runtime) -> None:
        self._work_loop(rt, "inference component", self._step, self._teardown, self._settle)

    def _work_loop(self, unit, what: str, step, teardown, settle) -> None:
        """A worker thread: each kick runs one step (the teardown once `unit.deleting`); a step that
        raises is settled with its error and the thread goes on."""
        while True:
            unit.kick.wait()
            unit.kick.clear()
            if self._closing:
                return
            try:
                if unit.deleting:
                    teardown(unit)
                    return
                step(unit)
            except Exception as exc:  # one bad step must not end the worker
                log.exception("%s %s: step failed", what, unit.name)
                settle(unit, f"{type(exc).__name__}: {exc}")

    def _step(self, rt: Runtime) -> None:
        with self.lock:
            record = self.ctx.store.get(KIND, rt.name)
            if record is None:
                return
            status = record["describe"]["InferenceComponentStatus"]
            container, version = record["container"], record["version"]
        if rt.copies.spawn is None:  # first step: the model data and the command of its copies
            try:
                rt.copies = self._prepare(rt, container, version, reuse=rt.recovering)
            except DeployFailed as exc:
                return self._fail(rt, str(exc)) if status == "Creating" else self._settle(rt, str(exc))
        if status == "Creating":
            error = self._converge(rt, strict=True)
            return self._fail(rt, error) if error else self._settle(rt, None)
        error = self._roll(rt) if rt.pending_spec else None
        scaled = self._converge(rt)
        self._settle(rt, error or scaled)

    def _prepare(self, rt: Runtime, container: dict, version: int, reuse: bool) -> Variant:
        variant = Variant("copies", 1.0)
        self.endpoints.servers.start_variant(
            self.ctx.store.dir(KIND, rt.name), f"spec-{version}", {"VariantName": "copies"}, variant, reuse,
            count=0, model={"describe": {"PrimaryContainer": container}})
        return variant

    def _health_timeout(self, name: str) -> int:
        record = self.ctx.store.get(KIND, name) or {}
        startup = (record.get("spec") or {}).get("StartupParameters") or {}
        return int(startup.get("ContainerStartupHealthCheckTimeoutInSeconds") or DEFAULT_HEALTH_TIMEOUT)

    def _place(self, rt: Runtime, n: int, need: Need) -> list[Slot]:
        """Up to n new slots on the component's variant (under the lock)."""
        pool = self._pool(rt.endpoint, rt.variant)
        scaling = self._scaling(pool)
        record = self.ctx.store.get(KIND, rt.name) or {}
        spread = ((record.get("spec") or {}).get("SchedulingConfig") or {}).get("PlacementStrategy") == "SPREAD"
        slots = []
        for _ in range(n):
            slot = Slot(rt.name, need)
            before = pool.count()
            if not pool.place(slot, scaling, self._may_add, spread):
                break
            slots.append(slot)
            if pool.count() != before:  # the account's instance count, before the next may_add
                self._publish(pool)
        return slots

    def _release(self, rt: Runtime, slots: list[Slot]) -> None:
        """Gives slots back, lets managed instance scaling remove empty instances, and lets other
        components use the room (under the lock)."""
        pool = self._pool(rt.endpoint, rt.variant)
        for slot in slots:
            pool.release(slot)
        self._tidy(pool)
        if slots:
            self._kick_pool(rt.endpoint, rt.variant, freed_by=rt)

    def _start(self, rt: Runtime, variant: Variant, slots: list[Slot]) -> tuple[list[tuple[Server, Slot]], str | None]:
        """One server per slot; those that pass /ping (their slots), and the first failure."""
        new: list[tuple[Server, Slot]] = []
        error = None
        try:
            for slot in slots:
                server = variant.spawn()
                new.append((server, slot))
                rt.starting.append(server)
        except OSError as exc:  # no process could start
            error = f"{type(exc).__name__}: {exc}"
        healthy = []
        timeout = self._health_timeout(rt.name)
        for server, slot in new:
            try:
                wait_healthy(server, timeout, "", subject=f"inference component {rt.name}")
                # the component's adapters before any traffic; a refusal fails the copy as /ping does
                self._join(rt, server)
                healthy.append((server, slot))
            except DeployFailed as exc:
                kill_group(server.proc)
                error = error or str(exc)
        rt.starting = []
        if rt.deleting or self._closing:
            for server, _ in healthy:
                kill_group(server.proc)
            healthy = []
        with self.lock:
            self._release(rt, [slot for slot in slots if all(slot is not s for _, s in healthy)])
        return healthy, error

    def _converge(self, rt: Runtime, strict: bool = False) -> str | None:
        """Starts or stops copies until DesiredCopyCount run (or no room is left); an error message
        when a copy failed (or, `strict`, could not be placed)."""
        with self.lock:
            if rt.deleting:
                return None
            serving, want = rt.copies.count(), rt.desired
            slots = self._place(rt, want - serving, rt.need) if want > serving else []
            short = max(0, want - serving - len(slots))
            if strict and short:
                self._release(rt, slots)
                pool = self._pool(rt.endpoint, rt.variant)
                return (f"Insufficient capacity: {short} of {want} copies of inference component {rt.name} fit on "
                        f"no instance of variant {rt.variant} ({pool.count()} instances of {pool.instance_type}; "
                        "raise ManagedInstanceScaling.MaxInstanceCount or lower the copies' "
                        "ComputeResourceRequirements).")
            remove = self._removals(rt, serving - want) if want < serving else []
        error = None
        if slots:
            started, error = self._start(rt, rt.copies, slots)
            with self.lock:
                for server, slot in started:
                    rt.slots[server.port] = slot
                    rt.copies.add(server)
                if error:
                    rt.desired = rt.copies.count()   # rolled back to what runs
        if remove:
            self._stop(rt, rt.copies, remove)
        return error

    def _removals(self, rt: Runtime, n: int, among: list[Server] | None = None) -> list[Server]:
        """The n copies to stop (of `among`, default all): those on the instances with the fewest
        copies first, so instances empty out."""
        servers = rt.copies.snapshot() if among is None else list(among)

        def crowd(s: Server) -> int:
            slot = rt.slots.get(s.port)
            return len(slot.instance.slots) if slot and slot.instance else 0
        order = sorted(range(len(servers)), key=lambda i: (crowd(servers[i]), -i))
        return [servers[i] for i in order[:n]]

    def _stop(self, rt: Runtime, variant: Variant, servers: list[Server],
              slots: dict[int, Slot] | None = None) -> None:
        variant.take_out(servers)   # drains, then stops
        table = rt.slots if slots is None else slots
        with self.lock:
            self._release(rt, [s for s in (table.pop(server.port, None) for server in servers) if s])

    def _batches(self, deployment: dict | None, n: int) -> tuple[int, float]:
        """(copies per batch, seconds between batches) of a DeploymentConfig's RollingUpdatePolicy;
        without one, every copy at once."""
        policy = (deployment or {}).get("RollingUpdatePolicy") or {}
        size = policy.get("MaximumBatchSize") or {}
        if not size:
            return max(n, 1), 0.0
        value = int(size.get("Value") or 1)
        batch = value if size.get("Type") == "COPY_COUNT" else max(1, n * value // 100)
        return max(1, batch), float(policy.get("WaitIntervalInSeconds") or 0) * self.time_scale

    def _add(self, rt: Runtime, started: list[tuple[Server, Slot]]) -> list[Server]:
        with self.lock:
            for server, slot in started:
                rt.slots[server.port] = slot
                rt.copies.add(server)
        return [server for server, _ in started]

    def _roll(self, rt: Runtime) -> str | None:
        """UpdateInferenceComponent's new specification, rolled in batches (MaximumBatchSize): each
        batch of new copies starts and passes /ping, takes traffic, then as many old copies drain
        and stop. On a failure the old copies come back and the new ones go (AWS's automatic
        rollback); the message says why."""
        with self.lock:
            spec, container, deployment = rt.pending_spec
            rt.pending_spec = None
            record = self.ctx.store.get(KIND, rt.name)
            version = record["version"] + 1
            need, n = self._need(spec), rt.desired
        batch, wait = self._batches(deployment, n)
        try:
            fresh = self._prepare(rt, container, version, reuse=False)
        except DeployFailed as exc:
            return f"Failed to update inference component: {exc}"
        old, old_need = rt.copies.snapshot(), rt.need
        old_count = len(old)
        added: list[Server] = []
        error = None
        while len(added) < n and not rt.deleting:
            k = min(batch, n - len(added))
            with self.lock:
                slots = self._place(rt, k, need)
                if len(slots) < k:
                    self._release(rt, slots)
                    error = (f"insufficient capacity for {k} copies of the new specification on variant "
                             f"{rt.variant}")
                    break
            started, error = self._start(rt, fresh, slots)
            if error or len(started) < k:
                for server, slot in started:
                    kill_group(server.proc)
                with self.lock:
                    self._release(rt, [slot for _, slot in started])
                error = error or "a new copy did not start"
                break
            added += self._add(rt, started)
            victims = self._removals(rt, k, among=old)
            if victims:
                self._stop(rt, rt.copies, victims)
                old = [s for s in old if all(s is not v for v in victims)]
            if wait and len(added) < n:
                time.sleep(wait)
        if error is None:
            if old:
                self._stop(rt, rt.copies, old)
            with self.lock:
                rt.copies.spawn, rt.need = fresh.spawn, need
                record = self.ctx.store.get(KIND, rt.name)
                record.update(spec=spec, container=container, version=version)
                record["describe"]["Specification"] = self._summary(spec, container)
                self._put(record)
            return None
        # rollback: the old specification's copies back to what ran, the new ones out
        missing = old_count - len(old)
        with self.lock:
            slots = self._place(rt, missing, old_need) if missing else []
        restored, again = self._start(rt, rt.copies, slots) if slots else ([], None)
        self._add(rt, restored)
        if added:
            self._stop(rt, rt.copies, added)
        with self.lock:
            rt.desired = rt.copies.count()
        message = f"Failed to update inference component: {error}"
        return message + (f"; rolling back failed: {again}" if again else "")

    def _settle(self, rt: Runtime, error: str | None) -> None:
        """After a step: the described copy counts; InService (with FailureReason when the step
        failed) unless more work is queued."""
        waiters = []
        with self.lock:
            record = self.ctx.store.get(KIND, rt.name)
            if record is None or record["describe"]["InferenceComponentStatus"] == "Deleting":
                return
            record["describe"]["RuntimeConfig"] = {"DesiredCopyCount": rt.desired,
                                                   "CurrentCopyCount": rt.copies.count()}
            fields = {}
            if not rt.kick.is_set() and rt.pending_spec is None:
                fields["InferenceComponentStatus"] = "InService"
                waiters, rt.waiters = rt.waiters, []
            if error:
                fields["FailureReason"] = error
            elif fields:
                fields["FailureReason"] = None
            rt.recovering = False
            self._put(record, **fields)
        for on_done in waiters:
            on_done(error is None, error)

    def _fail(self, rt: Runtime, error: str) -> None:
        """Creation failed: nothing of it keeps running."""
        self._stop(rt, rt.copies, rt.copies.snapshot())
        with self.lock:
            rt.desired = 0
            record = self.ctx.store.get(KIND, rt.name)
            if record is not None and record["describe"]["InferenceComponentStatus"] != "Deleting":
                record["describe"]["RuntimeConfig"]["CurrentCopyCount"] = 0
                self._put(record, InferenceComponentStatus="Failed", FailureReason=error)

    def _teardown(self, rt: Runtime) -> None:
        for server in list(rt.starting):
            kill_group(server.proc)
        self._stop(rt, rt.copies, rt.copies.snapshot())
        with self.lock:
            self._release(rt, list(rt.slots.values()))
            rt.slots.clear()
            self.ctx.store.delete(KIND, rt.name)
            self._rt.pop(rt.name, None)
            if self.autoscaling is not None:
                self.autoscaling.component_deleted(rt.name)
        for on_done in rt.waiters:
            on_done(False, "the inference component was deleted")

    # restart and shutdown ------------------------------------------------------------------
    def recover(self) -> None:
        """After a restart: copies start again; a deletion in progress finishes."""
        with self.lock:
            for record in self.ctx.store.all(KIND):
                if (record.get("spec") or {}).get("BaseInferenceComponentName"):
                    continue  # an adapter: _recover_adapters, once every base has its runtime
                d = record["describe"]
                status = d["InferenceComponentStatus"]
                try:
                    need = self._need(record.get("spec") or {})
                except ValidationError:
                    need = Need()
                rt = self._runtime(record["name"], d["EndpointName"], d["VariantName"], need)
                if status == "Deleting":
                    rt.deleting = True
                elif status == "Failed":
                    continue
                else:
                    rt.desired = int(d["RuntimeConfig"].get("DesiredCopyCount") or 0)
                    rt.recovering = True
                    d["RuntimeConfig"]["CurrentCopyCount"] = 0
                    self._put(record, InferenceComponentStatus="Creating" if status == "Creating" else "Updating")
                rt.kick.set()
            self._recover_adapters()

    def shutdown(self) -> None:
        self._closing = True
        for rt in list(self._rt.values()):
            for server in list(rt.starting) + rt.copies.snapshot():
                kill_group(server.proc)
            rt.kick.set()
        for art in list(self._adapters.values()):
            art.kick.set()
