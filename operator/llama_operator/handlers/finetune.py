"""kopf handlers for LlamaFinetune: thin glue between the planner, the SageMaker gateway and
status/finetune.py; every status write goes through `kube.write_status`.

- create (and re-run after a crash, since kopf records a handler as done only when it returns):
  validate -> plan -> upload source -> create the training job or adopt the one with the
  deterministic name, so a restart or re-apply never makes a second job;
- SQS events update status at once (the app routes training job events to `on_event`); a timer
  Describes as a slow resync;
- delete: policy Delete stops a running job and holds the finalizer until it has stopped;
  Retain releases at once.
The operator writes only `status`, never `spec`."""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref

import kopf

from llama_operator import metrics
from llama_operator.artifacts import training_source
from llama_operator.aws.errors import RetryableError, TerminalError, describe, retry_reason
from llama_operator.aws.events import owner_of
from llama_operator.aws.metrics import LossReader
from llama_operator.handlers.app import App, Refused
from llama_operator.handlers.kube import backoff, write_status
from llama_operator.kinds import FINETUNE_KIND, FINETUNES, GROUP, TRAINING_DETAIL_TYPE, VERSION
from llama_operator.plan import finetune as plan_ft
from llama_operator.plan.model_source import finetune_entry, resolve_base_model
from llama_operator.plan.names import training_job_name
from llama_operator.spec import LlamaFinetuneSpec, deletion_policy, stored_spec
from llama_operator.status import finetune as st
from llama_operator.status.conditions import synced
from llama_operator.status.values import now_iso

log = logging.getLogger(__name__)

PLURAL = FINETUNES
RESOURCE = (GROUP, VERSION, PLURAL)


async def _write(app: App, body, change) -> tuple[dict | None, dict | None]:
    meta = body["metadata"]
    return await write_status(app.kube, PLURAL, meta["namespace"], meta["name"], meta.get("uid"), change)


def _event(body, type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message)


# ---- handlers (module level; register() binds them to the app) ---------------------------------

def remember_name(app: App, type, name, namespace, uid, status, **_):
    """Every watch event: which resource a training job name belongs to (for events without owner
    tags), and the phase metric."""
    job = status.get("trainingJobName") or training_job_name(namespace, name, uid)
    if type == "DELETED":
        app.names.pop(job, None)
        app.loss.forget(job)
        metrics.phase(FINETUNE_KIND, namespace, name, None)
    else:
        app.names[job] = (namespace, name)
        metrics.phase(FINETUNE_KIND, namespace, name, status.get("phase") or "Pending")


# a base the named LlamaFinetune will never produce: Failed until the spec changes
_BASE_REFUSALS = ("FinetuneFailed", "FinetuneHasNoModel")


async def reconcile(app: App, spec, body, meta, status, name, namespace, uid, retry, llama_finetunes=None, **_):
    """Create (and resume): validate, resolve baseModel.fromFinetune, plan, upload the source,
    create or adopt the training job."""
    if meta.get("deletionTimestamp"):
        return
    generation = meta.get("generation")
    now = now_iso()
    if status.get("phase") in st.TERMINAL and status.get("trainingJobName"):
        return  # a finished job is history; nothing to create again
    try:
        model = app.admit(LlamaFinetuneSpec, stored_spec(body), namespace)
    except Refused as exc:
        reason, message = exc.reason, exc.message
        await _write(app, body, lambda current, meta: st.failed_before_start(
            current, reason, message, generation=meta.get("generation"), now=now))
        _event(body, "Warning", reason, message)
        return
    base_uri = None
    if model.base_model.from_finetune:
        base_uri, why, said = resolve_base_model(model.base_model.to_body(), namespace, name, llama_finetunes)
        if base_uri is None:
            if why in _BASE_REFUSALS:
                await _write(app, body, lambda current, meta: st.failed_before_start(
                    current, why, said, generation=meta.get("generation"), now=now))
                _event(body, "Warning", why, said)
                return
            if status.get("phase") != "WaitingForModel":  # one Event, not one per look
                await _write(app, body, lambda current, meta: st.waiting_for_model(
                    current, why, said, generation=meta.get("generation"), now=now))
                _event(body, "Normal", "WaitingForModel", said)
            raise kopf.TemporaryError(said, delay=app.settings.model_wait_seconds)
    if status.get("phase") in (None, "Pending", "WaitingForModel"):
        _event(body, "Normal", "Creating", "creating the SageMaker training job")
    try:
        prefix = plan_ft.source_prefix(model, app.settings.source_s3_uri)
        workloads = app.settings.workloads()
        source_uri, uploaded = await asyncio.to_thread(
            training_source.upload, app.s3, workloads, prefix,
            training_source.requirements_for(workloads, model.method.type,
                                             model.method.peft.type if model.method.peft else None))
        request = plan_ft.create_training_job_request(model, namespace=namespace, name=name, uid=uid,
                                                       source_s3_uri=source_uri, region=app.settings.region,
                                                       base_model_s3_uri=base_uri)
        described, created = await asyncio.to_thread(app.sagemaker.ensure_training_job, request)
    except TerminalError as exc:
        code, message = exc.code, f"SageMaker rejected {exc.operation}: {exc.code}: {exc.message}"
        await _write(app, body, lambda current, meta: st.failed_before_start(
            current, code, message, generation=meta.get("generation"), now=now))
        _event(body, "Warning", code, message)
        metrics.count("RECONCILES", kind=FINETUNE_KIND, outcome="terminal")
        return
    except Exception as exc:  # throttling, 5xx, S3, network: retried, never fatal to the operator
        delay = backoff(app.settings.retry_seconds, retry)
        reason = retry_reason(exc)
        message = f"{describe(exc)}; retrying in {delay:.0f}s (attempt {retry + 1})"

        def retrying(current, meta):
            values = st.pending(current, generation=meta.get("generation"), now=now)
            values["conditions"] = synced(values["conditions"], False, reason, message,
                                          generation=meta.get("generation"), now=now)
            return values

        await _write(app, body, retrying)
        _event(body, "Warning", reason, message)
        metrics.count("RECONCILES", kind=FINETUNE_KIND, outcome="retry")
        raise kopf.TemporaryError(message, delay=delay)

    job = request["TrainingJobName"]
    app.names[job] = (namespace, name)
    transitions: list = []

    def observed(current: dict, _meta) -> dict:
        # From the object as it is now, not as this handler started: SQS events for the new
        # job may already have moved status on (a tiny job can finish within a second).
        # Before a job exists, status holds at most a pre-creation failure (e.g. an invalid
        # spec since fixed): that is no ordering bound for the job's own story.
        basis = current if current.get("trainingJobName") else {"conditions": current.get("conditions")}
        values, events = st.from_training_job(described, basis, generation=generation, now=now)
        if not current.get("trainingJobName") and current.get("failureReason") and "failureReason" not in values:
            values["failureReason"] = None
        values.setdefault("trainingJobName", job)
        values["sourceS3Uri"] = source_uri
        values["conditions"] = synced(values.get("conditions", current.get("conditions")), True,
                                      "Created" if created else "Adopted",
                                      f"{'created' if created else 'adopted'} training job {job}",
                                      generation=generation, now=now)
        transitions[:] = events
        return values

    await write_status(app.kube, PLURAL, namespace, name, uid, observed)
    events = transitions
    _event(body, "Normal", "Created" if created else "Adopted",
           f"{'created' if created else 'adopted existing'} training job {request['TrainingJobName']}"
           + ("" if uploaded else " (source already in S3)"))
    for type_, reason, message in events:
        _event(body, type_, reason, message)
    metrics.count("RECONCILES", kind=FINETUNE_KIND, outcome="ok")


async def spec_changed(app: App, spec, body, meta, status, name, namespace, uid, retry, **kwargs):
    if status.get("trainingJobName"):
        # A training job cannot change once created; the CRD's rules make the spec immutable
        # in a real cluster, so this is reached only where admission did not run.
        _event(body, "Warning", "SpecImmutable", "the spec changed after training job "
               f"{status['trainingJobName']} was created; the job keeps running as it was created. "
               "Create a new LlamaFinetune for a new run")
        return
    await reconcile(app, spec=spec, body=body, meta=meta, status=status, name=name, namespace=namespace, uid=uid,
                    retry=retry, llama_finetunes=kwargs.get("llama_finetunes"))


async def resync(app: App, body, meta, status, name, namespace, uid, **_):
    if meta.get("deletionTimestamp") or status.get("phase") in st.TERMINAL:
        return
    job = status.get("trainingJobName")
    if not job:
        return
    try:
        described = await asyncio.to_thread(app.sagemaker.describe_training_job, job)
    except (RetryableError, TerminalError) as exc:
        log.warning("resync of %s/%s: %s", namespace, name, exc)
        return
    if described is None:
        return
    _, transitions = await record_observation(app, namespace, name, described)
    for type_, reason, message in transitions:
        _event(body, type_, reason, message)
    if described.get("TrainingJobStatus") == "InProgress":
        await refresh_loss(app, namespace, name, job, described.get("TrainingStartTime"),
                           status.get("trainingLoss"))


async def follow_loss(app: App, status, name, namespace, stopped, **_):
    """While the job is InProgress, its newest train:loss from CloudWatch into status (the LOSS
    column), every app.loss.interval; kopf stops this once the job has ended, and from then on
    FinalMetricDataList (through the events and resync) decides."""
    job = status.get("trainingJobName")
    while not stopped:
        if status.get("phase") == "InProgress":  # a live view: kopf keeps it current
            await refresh_loss(app, namespace, name, job, status.get("startTime"), status.get("trainingLoss"))
        await stopped.wait(app.loss.interval)
    app.loss.forget(job)


async def refresh_loss(app: App, namespace: str, name: str, job: str, started, shown) -> None:
    """The running job's newest loss into status when it differs from what status shows. The
    read is rate-limited per job and never raises; the write skips a job that ended meanwhile."""
    loss = await app.loss.latest(job, started)
    if loss is None or loss == shown:
        return

    def observed(current: dict, _meta) -> dict | None:
        if current.get("phase") != "InProgress" or current.get("trainingJobName") != job \
                or current.get("trainingLoss") == loss:
            return None
        return {"trainingLoss": loss}

    try:
        await write_status(app.kube, PLURAL, namespace, name, None, observed)
    except Exception as exc:  # the next poll writes it
        log.warning("training loss of %s/%s not written: %s", namespace, name, exc)


async def finalize(app: App, spec, body, status, name, namespace, uid, retry, **_):
    if deletion_policy(stored_spec(body)) == "Retain":
        return
    job = status.get("trainingJobName") or training_job_name(namespace, name, uid)
    try:
        described = await asyncio.to_thread(app.sagemaker.describe_training_job, job)
        if described is None or described["TrainingJobStatus"] in st.TERMINAL:
            return  # nothing running: release the finalizer
        if described["TrainingJobStatus"] == "InProgress":
            await asyncio.to_thread(app.sagemaker.stop_training_job, job)
            _event(body, "Normal", "Stopping", f"stopping training job {job} (deletionPolicy Delete)")
    except TerminalError as exc:
        _event(body, "Warning", exc.code, f"cannot stop {job}: {exc.message}; releasing the finalizer")
        return
    except RetryableError as exc:
        raise kopf.TemporaryError(f"{exc}", delay=backoff(app.settings.retry_seconds, retry))
    await _write(app, body, lambda current, _: None if current.get("phase") == "Stopping" else {"phase": "Stopping"})
    raise kopf.TemporaryError(f"waiting for training job {job} to stop", delay=app.settings.stop_poll_seconds)


async def record_observation(app: App, namespace: str, name: str, detail: dict, *, uid: str | None = None):
    """One observation of the job (an event's detail, or a Describe) into status, guarded
    against concurrent writers; returns (object, transitions to report: none if nothing was
    written)."""
    transitions: list = []

    def observed(current: dict, meta) -> dict | None:
        values, transitions[:] = st.from_training_job(detail, current, generation=meta.get("generation"),
                                                      now=now_iso())
        return values

    obj, written = await write_status(app.kube, PLURAL, namespace, name, uid, observed)
    return obj, (transitions if written else [])


async def on_training_event(app: App, event: dict) -> None:
    """One training job state-change event from SQS -> the resource's status, at once."""
    detail = event["detail"]
    job = detail.get("TrainingJobName", "")
    owner = owner_of(detail)
    where = (owner[0], owner[1]) if owner else app.names.get(job)
    metrics.count("EVENTS_RECEIVED", detail_type=TRAINING_DETAIL_TYPE, matched=str(where is not None).lower())
    if where is None:
        log.debug("event for training job %s, which no LlamaFinetune owns", job)
        return
    obj, transitions = await record_observation(app, *where, detail, uid=owner[2] if owner else None)
    for type_, reason, message in transitions:
        await app.kube.post_event(obj, type_, reason, message)


def register(registry: kopf.OperatorRegistry, app: App) -> None:
    """Add the LlamaFinetune handlers to `registry`, bound to `app`, and route training job
    events to them."""
    if app.loss is None:
        app.loss = LossReader.from_settings(app.settings)
    bound = functools.partial
    finetune_index(registry)
    kopf.on.event(*RESOURCE, registry=registry, id="remember_name")(bound(remember_name, app))
    kopf.on.create(*RESOURCE, registry=registry, id="reconcile")(bound(reconcile, app))
    kopf.on.resume(*RESOURCE, registry=registry, id="reconcile")(bound(reconcile, app))
    kopf.on.update(*RESOURCE, registry=registry, id="spec_changed", field="spec")(bound(spec_changed, app))
    kopf.timer(*RESOURCE, registry=registry, id="resync", interval=app.settings.resync_seconds,
               initial_delay=app.settings.resync_seconds, idle=None)(bound(resync, app))
    kopf.daemon(*RESOURCE, registry=registry, id="follow_loss", cancellation_timeout=5.0,
                when=_running)(bound(follow_loss, app))
    kopf.on.delete(*RESOURCE, registry=registry, id="finalize")(bound(finalize, app))
    app.routes[TRAINING_DETAIL_TYPE] = bound(on_training_event, app)


_INDEXED: "weakref.WeakSet[kopf.OperatorRegistry]" = weakref.WeakSet()


def finetune_index(registry: kopf.OperatorRegistry) -> None:
    """The kopf index of LlamaFinetunes by (namespace, name) that both kinds read (a fine-tune's
    baseModel.fromFinetune, an endpoint's model and adapters), added once per registry."""
    if registry in _INDEXED:
        return
    _INDEXED.add(registry)
    kopf.index(GROUP, VERSION, FINETUNES, registry=registry, id="llama_finetunes")(finetune_entry)


def _running(status, meta, **_) -> bool:
    return status.get("phase") == "InProgress" and bool(status.get("trainingJobName")) \
        and not meta.get("deletionTimestamp")
