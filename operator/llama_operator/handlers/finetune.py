"""kopf handlers for LlamaFinetune: thin glue between the planner, the SageMaker gateway and status.py.

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

import kopf

from llama_operator import metrics, sourcepack
from llama_operator import status as st
from llama_operator.aws.events import owner_of
from llama_operator.aws.metrics import LossReader
from llama_operator.aws.sagemaker import RetryableError, TerminalError
from llama_operator.endpoint_status import now_iso
from llama_operator.handlers import planning
from llama_operator.handlers.app import App
from llama_operator.handlers.kube import backoff
from llama_operator.kinds import FINETUNE_KIND, FINETUNES, GROUP, TRAINING_DETAIL_TYPE, VERSION

log = logging.getLogger(__name__)

PLURAL = FINETUNES
RESOURCE = (GROUP, VERSION, PLURAL)


def _apply(patch: kopf.Patch, values: dict) -> None:
    for key, value in values.items():
        patch.status[key] = value


def _event(body, type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message)


# ---- handlers (module level; register() binds them to the app) ---------------------------------

def remember_name(app: App, type, name, namespace, uid, status, **_):
    """Every watch event: which resource a training job name belongs to (for events without owner
    tags), and the phase metric."""
    job = status.get("trainingJobName") or planning.training_job_name(namespace, name, uid)
    if type == "DELETED":
        app.names.pop(job, None)
        app.loss.forget(job)
        metrics.phase(FINETUNE_KIND, namespace, name, None)
    else:
        app.names[job] = (namespace, name)
        metrics.phase(FINETUNE_KIND, namespace, name, status.get("phase") or "Pending")


async def reconcile(app: App, spec, body, meta, status, name, namespace, uid, patch, retry, **_):
    """Create (and resume): validate, plan, upload the source, create or adopt the training job."""
    if meta.get("deletionTimestamp"):
        return
    generation = meta.get("generation")
    now = now_iso()
    if status.get("phase") in st.TERMINAL and status.get("trainingJobName"):
        return  # a finished job is history; nothing to create again
    spec = dict(spec)
    try:
        model = planning.validate_spec(spec)
    except Exception as exc:  # pydantic's errors name each field
        message = f"spec rejected: {planning.describe_invalid(exc)}"
        _apply(patch, st.failed_before_start(status, "InvalidSpec", message, generation=generation, now=now))
        _event(body, "Warning", "InvalidSpec", message)
        return
    role = spec.get("roleArn", "")
    if app.allowlist is not None:
        denied = app.allowlist.check(namespace, role)
        if denied:
            _apply(patch, st.failed_before_start(status, "RoleNotAllowed", denied, generation=generation, now=now))
            _event(body, "Warning", "RoleNotAllowed", denied)
            return
    if status.get("phase") in (None, "Pending"):
        _event(body, "Normal", "Creating", "creating the SageMaker training job")
    try:
        probe = planning.create_training_job_request(model, namespace=namespace, name=name, uid=uid,
                                                     source_s3_uri="s3://placeholder/source.tar.gz",
                                                     region=app.settings.region)
        prefix = app.settings.source_s3_uri or planning.output_path(probe)
        workloads = app.settings.workloads()
        source_uri, uploaded = await asyncio.to_thread(
            sourcepack.upload, app.s3, workloads, prefix, sourcepack.requirements_for(workloads, model.method.type))
        request = planning.create_training_job_request(model, namespace=namespace, name=name, uid=uid,
                                                       source_s3_uri=source_uri, region=app.settings.region)
        described, created = await asyncio.to_thread(app.sagemaker.ensure_training_job, request)
    except TerminalError as exc:
        message = f"SageMaker rejected {exc.operation}: {exc.code}: {exc.message}"
        _apply(patch, st.failed_before_start(status, exc.code, message, generation=generation, now=now))
        _event(body, "Warning", exc.code, message)
        metrics.count("RECONCILES", kind=FINETUNE_KIND, outcome="terminal")
        return
    except RetryableError as exc:
        delay = backoff(app.settings.retry_seconds, retry)
        reason = "Throttled" if exc.throttled else "ServiceUnavailable"
        message = f"{exc.operation}: {exc.code}: {exc.message}; retrying in {delay:.0f}s (attempt {retry + 1})"
        values = st.pending(status, generation=generation, now=now)
        values["conditions"] = st.synced(values["conditions"], False, reason, message,
                                         generation=generation, now=now)
        _apply(patch, values)
        _event(body, "Warning", reason, message)
        metrics.count("RECONCILES", kind=FINETUNE_KIND, outcome="retry")
        raise kopf.TemporaryError(message, delay=delay)
    except Exception as exc:  # S3, network, anything: retried, never fatal to the operator
        delay = backoff(app.settings.retry_seconds, retry)
        message = f"{type(exc).__name__}: {exc}; retrying in {delay:.0f}s"
        values = st.pending(status, generation=generation, now=now)
        values["conditions"] = st.synced(values["conditions"], False, "Error", message,
                                         generation=generation, now=now)
        _apply(patch, values)
        raise kopf.TemporaryError(message, delay=delay)

    job = request["TrainingJobName"]
    app.names[job] = (namespace, name)
    transitions: list = []

    def observed(obj: dict) -> dict:
        # From the object as it is now, not as this handler started: SQS events for the new
        # job may already have moved status on (a tiny job can finish within a second).
        current = obj.get("status") or {}
        # Before a job exists, status holds at most a pre-creation failure (e.g. an invalid
        # spec since fixed): that is no ordering bound for the job's own story.
        basis = current if current.get("trainingJobName") else {"conditions": current.get("conditions")}
        values, events = st.from_training_job(described, basis, generation=generation, now=now)
        if not current.get("trainingJobName") and current.get("failureReason") and "failureReason" not in values:
            values["failureReason"] = None
        values.setdefault("trainingJobName", job)
        values["sourceS3Uri"] = source_uri
        values["conditions"] = st.synced(values.get("conditions", current.get("conditions")), True,
                                         "Created" if created else "Adopted",
                                         f"{'created' if created else 'adopted'} training job {job}",
                                         generation=generation, now=now)
        transitions[:] = events
        return values

    await app.kube.update_status(f"{GROUP}/{VERSION}", PLURAL, namespace, name, observed)
    events = transitions
    _event(body, "Normal", "Created" if created else "Adopted",
           f"{'created' if created else 'adopted existing'} training job {request['TrainingJobName']}"
           + ("" if uploaded else " (source already in S3)"))
    for type_, reason, message in events:
        _event(body, type_, reason, message)
    metrics.count("RECONCILES", kind=FINETUNE_KIND, outcome="ok")


async def spec_changed(app: App, spec, body, meta, status, name, namespace, uid, patch, retry, **kwargs):
    if status.get("trainingJobName"):
        # A training job cannot change once created; the CRD's rules make the spec immutable
        # in a real cluster, so this is reached only where admission did not run.
        _event(body, "Warning", "SpecImmutable", "the spec changed after training job "
               f"{status['trainingJobName']} was created; the job keeps running as it was created. "
               "Create a new LlamaFinetune for a new run")
        return
    await reconcile(app, spec=spec, body=body, meta=meta, status=status, name=name, namespace=namespace, uid=uid,
                    patch=patch, retry=retry)


async def resync(app: App, body, meta, status, name, namespace, uid, patch, **_):
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

    def observed(obj: dict) -> dict | None:
        current = obj.get("status") or {}
        if current.get("phase") != "InProgress" or current.get("trainingJobName") != job \
                or current.get("trainingLoss") == loss:
            return None
        return {"trainingLoss": loss}

    try:
        await app.kube.update_status(f"{GROUP}/{VERSION}", PLURAL, namespace, name, observed)
    except Exception as exc:  # the next poll writes it
        log.warning("training loss of %s/%s not written: %s", namespace, name, exc)


async def finalize(app: App, spec, body, status, name, namespace, uid, patch, retry, **_):
    if planning.deletion_policy(dict(spec)) == "Retain":
        return
    job = status.get("trainingJobName") or planning.training_job_name(namespace, name, uid)
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
    patch.status["phase"] = "Stopping"
    raise kopf.TemporaryError(f"waiting for training job {job} to stop", delay=app.settings.stop_poll_seconds)


async def record_observation(app: App, namespace: str, name: str, detail: dict, *, uid: str | None = None):
    """One observation of the job (an event's detail, or a Describe) into status, guarded
    against concurrent writers; returns (object, transitions to report: none if nothing was
    written)."""
    transitions: list = []

    def observed(obj: dict) -> dict | None:
        if uid and uid != obj["metadata"].get("uid"):
            return None  # an older object of the same name
        values, transitions[:] = st.from_training_job(detail, obj.get("status") or {},
                                                      generation=obj["metadata"].get("generation"), now=now_iso())
        return values

    obj, written = await app.kube.update_status(f"{GROUP}/{VERSION}", PLURAL, namespace, name, observed)
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


def _running(status, meta, **_) -> bool:
    return status.get("phase") == "InProgress" and bool(status.get("trainingJobName")) \
        and not meta.get("deletionTimestamp")
