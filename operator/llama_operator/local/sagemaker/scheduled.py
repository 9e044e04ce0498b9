"""The service's scheduled mode (`local-sagemaker --scheduled SECONDS`), for the operator's scale
benchmark: training jobs and endpoints move through SageMaker's states on a timetable, one step
every SECONDS (with jitter), announcing each change as the real service does, but nothing runs:
no container, no model, no serving. A job ends Completed with a model artifact URI that names no
object; an endpoint's invocations fail with ModelError. Everything else (the API, its
validation, names, tags, events) is the service as always."""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from typing import Callable

from llama_operator.local.sagemaker import imageenv
from llama_operator.local.sagemaker.context import Context
from llama_operator.local.sagemaker.endpoints import KIND as ENDPOINT, Endpoints, retained_properties
from llama_operator.local.sagemaker.errors import ModelError
from llama_operator.local.sagemaker.training_status import KIND as JOB, TERMINAL, JobStatus

_JOB_STEPS = (("Starting", "Preparing the instances for training"),
              ("Downloading", "Downloading input data"),
              ("Training", "Training image download completed. Training in progress."),
              ("Uploading", "Uploading generated training model"))


class Timetable:
    """One thread that runs each callback at its time."""

    def __init__(self):
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        threading.Thread(target=self._run, name="timetable", daemon=True).start()

    def after(self, seconds: float, fn: Callable[[], None]) -> None:
        with self._cv:
            heapq.heappush(self._due, (time.monotonic() + seconds, next(self._seq), fn))
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    self._cv.wait(None if not self._due else self._due[0][0] - time.monotonic())
                if self._closed:
                    return
                _, _, fn = heapq.heappop(self._due)
            try:
                fn()
            except Exception:  # one record gone (deleted meanwhile) must not stop the others
                pass


class ScheduledJobs:
    """TrainingJobs' interface, on the timetable."""

    def __init__(self, ctx: Context, timetable: Timetable, step_seconds: float,
                 images: imageenv.ImageEnvironments | None = None):
        self.ctx, self.timetable, self.step = ctx, timetable, step_seconds
        self.images = images or imageenv.ImageEnvironments()
        self._running: dict[str, int] = {}
        self._stopping: set[str] = set()
        self._lock = threading.Lock()

    def _later(self) -> float:
        return self.step * random.uniform(0.5, 1.5)

    def start(self, name: str) -> None:
        count = int(self.ctx.store.get(JOB, name)["describe"]["ResourceConfig"].get("InstanceCount", 1))
        with self._lock:
            self._running[name] = count
        self.timetable.after(0, lambda: self._step(name, 0))

    def _step(self, name: str, i: int) -> None:
        job = JobStatus(self.ctx, name)
        with self._lock:
            if name in self._stopping or name not in self._running:
                return
        if i < len(_JOB_STEPS):
            job.transition(None, *_JOB_STEPS[i])
            if i == 0:
                job.update(TrainingStartTime=time.time())
            self.timetable.after(self._later(), lambda: self._step(name, i + 1))
            return
        output = job.describe["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        job.transition("Completed", "Completed", "Training job completed", end=time.time(),
                       ModelArtifacts={"S3ModelArtifacts": f"{output}/{name}/output/model.tar.gz"})
        with self._lock:
            self._running.pop(name, None)

    def stop(self, name: str) -> None:
        with self._lock:
            if name not in self._running:
                return
            self._stopping.add(name)
        job = JobStatus(self.ctx, name)
        job.transition("Stopping", "Stopping", "Stopping the training job")

        def stopped():
            job.transition("Stopped", "Stopped", "Training job stopped", end=time.time())
            with self._lock:
                self._running.pop(name, None)
                self._stopping.discard(name)
        self.timetable.after(self._later(), stopped)

    def running_instances(self) -> int:
        with self._lock:
            return sum(self._running.values())

    def shutdown(self) -> None:
        self.timetable.close()

    def recover(self) -> None:
        for record in self.ctx.store.all(JOB):
            if record["describe"]["TrainingJobStatus"] not in TERMINAL:
                JobStatus(self.ctx, record["name"]).transition(
                    "Failed", "Failed", "Training job failed: the local SageMaker service restarted while it ran",
                    failure="host lost: the local SageMaker service restarted while the job was running",
                    end=time.time())


class ScheduledEndpoints(Endpoints):
    """Endpoints' interface, on the timetable: Creating or Updating for about a step, then
    InService; Deleting for about a step, then gone. UpdateEndpointWeightsAndCapacities changes the
    counts and weights after a step (Updating meanwhile); the autoscaler leaves these endpoints alone
    (no invocations to measure)."""

    def __init__(self, ctx: Context, timetable: Timetable, step_seconds: float,
                 images: imageenv.ImageEnvironments | None = None):
        super().__init__(ctx, [], images)
        self.timetable, self.step = timetable, step_seconds
        # endpoint -> variant -> {"count", "weight"}: what scaling or a retaining update set
        self._kept: dict[str, dict[str, dict]] = {}

    def _later(self) -> float:
        return self.step * random.uniform(0.5, 1.5)

    def _variants(self, config_name: str, kept: dict[str, dict] | None = None) -> list[dict]:
        config = self.ctx.store.get("endpoint-config", config_name)
        out = []
        for pv in (config or {}).get("describe", {}).get("ProductionVariants", []):
            k = (kept or {}).get(pv["VariantName"], {})
            weight = float(pv.get("InitialVariantWeight", 1.0) if k.get("weight") is None else k["weight"])
            count = int(pv.get("InitialInstanceCount", 1) if k.get("count") is None else k["count"])
            out.append({"VariantName": pv["VariantName"], "CurrentWeight": weight, "DesiredWeight": weight,
                        "CurrentInstanceCount": count, "DesiredInstanceCount": count})
        return out

    def _settle(self, name: str, **fields) -> None:
        record = self.ctx.store.get(ENDPOINT, name)
        if record is None or record["describe"]["EndpointStatus"] == "Deleting":
            return
        config = fields.get("EndpointConfigName") or record["describe"]["EndpointConfigName"]
        self._set(name, "InService", ProductionVariants=self._variants(config, self._kept.get(name)), **fields)

    measures_load = False  # nothing serves: the autoscaler has no metric here

    def create(self, name: str, *, reuse_model_data: bool = False) -> None:
        record = self.ctx.store.get(ENDPOINT, name)
        if reuse_model_data and record:  # recovered: back at the counts it had
            self._kept[name] = retained_properties(record["describe"])
        else:
            self._kept.pop(name, None)
        self.timetable.after(self._later(), lambda: self._settle(name))

    def update(self, name: str, new_config: str, retain: dict[str, dict] | None = None) -> None:
        def settle():
            self._kept[name] = dict(retain or {})
            self._settle(name, EndpointConfigName=new_config, FailureReason=None)
        self.timetable.after(self._later(), settle)

    def update_weights_and_capacities(self, name: str, changes: dict[str, dict], on_done=None) -> None:
        record = self.ctx.store.get(ENDPOINT, name)
        if record is None:
            return
        pvs = [dict(pv) for pv in record["describe"].get("ProductionVariants") or []]
        for pv in pvs:
            change = changes.get(pv["VariantName"], {})
            if change.get("DesiredInstanceCount") is not None:
                pv["DesiredInstanceCount"] = int(change["DesiredInstanceCount"])
            if change.get("DesiredWeight") is not None:
                pv["DesiredWeight"] = float(change["DesiredWeight"])
        self._set(name, "Updating", FailureReason=None, ProductionVariants=pvs)

        def settle():
            kept = self._kept.setdefault(name, {})
            for vname, change in changes.items():
                k = kept.setdefault(vname, {})
                if change.get("DesiredInstanceCount") is not None:
                    k["count"] = int(change["DesiredInstanceCount"])
                if change.get("DesiredWeight") is not None:
                    k["weight"] = float(change["DesiredWeight"])
            self._settle(name)
            if on_done:
                on_done(True, None)
        self.timetable.after(self._later(), settle)

    def current_count(self, name: str, variant: str) -> int | None:
        record = self.ctx.store.get(ENDPOINT, name)
        pv = next((pv for pv in (record or {}).get("describe", {}).get("ProductionVariants") or []
                   if pv["VariantName"] == variant), None)
        return pv.get("CurrentInstanceCount") if pv else None

    def delete(self, name: str) -> None:
        self._kept.pop(name, None)
        self.timetable.after(self._later(), lambda: self.ctx.store.delete(ENDPOINT, name))

    def shutdown(self) -> None:
        self.timetable.close()

    def invoke(self, name: str, body: bytes, headers: dict[str, str], target_variant: str | None):
        raise ModelError(f"endpoint {name} runs in the service's scheduled mode: nothing serves it")
