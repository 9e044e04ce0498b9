"""kopf handlers for LlamaEndpoint: a spec becomes an LMI Model, an EndpointConfig and an Endpoint
in SageMaker; a spec change rolls blue/green to a new Model and EndpointConfig named by the spec's
hash; deletion removes everything the resource owns (found by owner tags) unless it says Retain.

The handlers send requests and record what they sent. Progress (Creating -> InService, Updating ->
InService or Degraded) arrives as "SageMaker Endpoint State Change" events from the SQS consumer
(the app routes them here by detail-type); a timer re-reads DescribeEndpoint as the slow fallback. Both
end in `settle`, which maps the observation to status (monotonic, endpoint_status.py); once the
desired configuration serves, the superseded models and configurations are deleted.

Every status write (handlers, events, resync) is a read-modify-write through `write_status`: the
update is computed from the object as read for the write, with its resourceVersion as the
precondition, and computed again on a conflict. So a handler's view from before a fast state
change, or a late event, never overwrites newer status.

`register(registry, app)` is called with the LlamaFinetune handlers' `App` (settings, S3 client,
Kubernetes writer), after `finetune.register`."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import kopf

from llama_operator import endpoint_code, metrics, s3uri
from llama_operator import endpoint_status as es
from llama_operator.aws.endpoints import EndpointGateway, RetryableError, SageMakerError, TerminalError
from llama_operator.handlers.kube import backoff
from llama_operator.kinds import ENDPOINT_DETAIL_TYPE, ENDPOINT_KIND, ENDPOINTS, FINETUNES, GROUP, KIND_TAG, VERSION

log = logging.getLogger(__name__)

PLURAL = ENDPOINTS
RESOURCE = (GROUP, VERSION, PLURAL)
KIND = ENDPOINT_KIND


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class Timing:
    """How often a waiting endpoint re-checks its LlamaFinetune, and how soon a request that met
    a busy endpoint is tried again (environment-tunable so tests need not wait minutes)."""
    model_wait: float = field(default_factory=lambda: _env_float("LLAMA_OPERATOR_MODEL_WAIT_SECONDS", 10.0))
    busy_retry: float = field(default_factory=lambda: _env_float("LLAMA_OPERATOR_ENDPOINT_RETRY_SECONDS", 5.0))
    delete_poll: float = 2.0


# ---- planning --------------------------------------------------------------------------------

@dataclass
class Plan:
    """Everything one spec generation asks of SageMaker, with the names it gets."""
    endpoint_name: str
    model_name: str
    config_name: str
    spec_hash: str
    model_request: dict
    config_request: dict
    endpoint_request: dict
    update_request: dict
    model_s3_uri: str
    code_s3_uri: str


def validate_spec(spec: Mapping[str, Any]):
    """The pydantic model of the spec, or ValueError naming each bad field."""
    from pydantic import ValidationError

    from llama_operator.spec import LlamaEndpointSpec

    try:
        return LlamaEndpointSpec.model_validate(dict(spec))
    except ValidationError as exc:
        problems = "; ".join(
            (f"spec.{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "spec: ") + e["msg"]
            for e in exc.errors())
        raise ValueError(f"invalid LlamaEndpoint spec: {problems}") from exc


def code_base_uri(source_s3_uri: str | None, model_s3_uri: str) -> str:
    """Where endpoint code prefixes go: beside the training source packs when the operator has a
    source location, else in the model's own bucket (the endpoint's role reads it anyway)."""
    if source_s3_uri:
        return source_s3_uri.rstrip("/")
    bucket, _ = s3uri.split(model_s3_uri)
    return f"s3://{bucket}/llama-operator"


def combined_hash(spec_hash: str, code_s3_uri: str) -> str:
    """The spec's hash, changed also when the rendered serving code changes (an operator upgrade
    that renders different artifacts rolls endpoints forward as a spec change would)."""
    return hashlib.sha256(f"{spec_hash}|{code_s3_uri}".encode()).hexdigest()[:len(spec_hash) or 16]


def make_plan(spec_model, *, namespace: str, name: str, uid: str, model_s3_uri: str, region: str, s3,
              source_s3_uri: str | None) -> Plan:
    """Render and upload the code prefix, then plan every request (the one S3 write is here so
    the hash can cover what was uploaded)."""
    from llama_operator.plan import endpoint as plan_ep
    from llama_operator.plan import names

    files = endpoint_code.render(spec_model.serving.engine, model_s3_uri, plan_ep.serving_settings(spec_model))
    code_uri = endpoint_code.upload(s3, code_base_uri(source_s3_uri, model_s3_uri), files)
    h = combined_hash(plan_ep.spec_hash(spec_model, model_s3_uri=model_s3_uri), code_uri)
    common = dict(namespace=namespace, name=name, uid=uid, spec_hash=h)
    return Plan(
        endpoint_name=names.endpoint_name(namespace, name, uid),
        model_name=names.model_name(namespace, name, uid, h),
        config_name=names.endpoint_config_name(namespace, name, uid, h),
        spec_hash=h,
        model_request=plan_ep.create_model_request(spec_model, code_s3_uri=code_uri, region=region, **common),
        config_request=plan_ep.create_endpoint_config_request(spec_model, **common),
        endpoint_request=plan_ep.create_endpoint_request(spec_model, **common),
        update_request=plan_ep.update_endpoint_request(spec_model, **common),
        model_s3_uri=model_s3_uri, code_s3_uri=code_uri,
    )


def names_prefix(namespace: str, name: str, uid: str) -> str | None:
    """The part every model/config name of this resource shares, to narrow SageMaker listings
    before owner tags are read."""
    from llama_operator.plan import names

    candidates = [f(namespace, name, uid, h) for f in (names.model_name, names.endpoint_config_name)
                  for h in ("0" * 16, "f" * 16)]
    prefix = os.path.commonprefix(candidates)
    return prefix if len(prefix) >= 4 else None


def desired_names(namespace: str, name: str, uid: str, status: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(config, model) that status.specHash asks for; (None, None) before any was planned."""
    h = status.get("specHash")
    if not h:
        return None, None
    from llama_operator.plan import names

    return names.endpoint_config_name(namespace, name, uid, h), names.model_name(namespace, name, uid, h)


# ---- the model source ------------------------------------------------------------------------

def resolve_model(spec: Mapping[str, Any], namespace: str, finetunes) -> tuple[str | None, str, str]:
    """(model S3 URI or None, reason, message). `finetunes`: the kopf index of LlamaFinetunes by
    (namespace, name). None means not available: yet (WaitingForModel) or, with reason
    FinetuneFailed, not without the user's help."""
    model = spec.get("model") or {}
    if model.get("s3Uri"):
        return model["s3Uri"], "ModelGiven", f"model from {model['s3Uri']}"
    source = model.get("fromFinetune")
    found = list(finetunes.get((namespace, source), [])) if finetunes is not None and source else []
    if not found:
        return None, "FinetuneNotFound", (f"waiting for LlamaFinetune {source} in namespace {namespace}: "
                                          "it does not exist (yet)")
    ft = found[0]
    phase = ft.get("phase") or "Pending"
    if phase == "Completed":
        if not ft.get("modelS3Uri"):
            return None, "FinetuneHasNoModel", f"LlamaFinetune {source} completed but reports no status.modelS3Uri"
        return ft["modelS3Uri"], "FinetuneCompleted", f"model from LlamaFinetune {source}: {ft['modelS3Uri']}"
    if phase in ("Failed", "Stopped"):
        why = f": {ft['failureReason']}" if ft.get("failureReason") else ""
        return None, "FinetuneFailed", (f"LlamaFinetune {source} is {phase}{why}; re-create it, or point "
                                        "spec.model at another model")
    return None, "FinetuneNotCompleted", f"waiting for LlamaFinetune {source} to complete (it is {phase})"


# ---- status helpers --------------------------------------------------------------------------

def _synced(conditions, ok: bool, reason: str, message: str, generation) -> list[dict]:
    return es.set_condition(conditions, "Synced", ok, reason, message[:1000], generation=generation,
                            now=es.now_iso())


def _refused(status: Mapping[str, Any]) -> bool:
    """Status records a refusal of the spec that still stands (es.refusal)."""
    return es.refusal(status) is not None


def _with(status: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """Status with `update` merged as a merge patch would (None removes a field)."""
    return {k: v for k, v in {**status, **update}.items() if v is not None}


def without_refusal(status: Mapping[str, Any], generation) -> dict:
    """Status as it reads once the spec has moved past the allowlist's refusal (es.lift_refusal);
    `status` itself when no refusal stands."""
    lift = es.lift_refusal(status, generation=generation)
    return _with(status, lift) if lift else dict(status)


def clearing_refusal(change):
    """`change`, applied to status with the role allowlist's refusal lifted (es.lift_refusal) where
    one stands: the spec changed and the refusal no longer holds, so its marks go (what `change`
    writes may set a new reason)."""
    def compute(status: dict, meta: Mapping[str, Any]) -> dict:
        lift = es.lift_refusal(status, generation=meta.get("generation"))
        if not lift:
            return change(status, meta)
        return {**lift, **(change(_with(status, lift), meta) or {})}
    return compute


async def write_status(kube, namespace: str, name: str, uid: str | None, change
                       ) -> tuple[dict | None, dict | None]:
    """Read-modify-write of one LlamaEndpoint's status through `KubeWriter.update_status`: the
    read's resourceVersion is the precondition, so a writer that raced us (an SQS event, the
    resync, a handler) makes the API server answer 409 and `change` runs again on the fresh
    object. `change(status, meta)` maps status as it is now (not as a handler or an event saw
    it earlier) to the values to merge, {} for none; it does no I/O. Returns (object as read,
    values written); (None, None) when the object is gone or the name now holds another uid."""
    def compute(obj: dict) -> dict | None:
        meta = obj.get("metadata") or {}
        if uid and meta.get("uid") != uid:
            return None  # deleted and created again under the same name
        return change(dict(obj.get("status") or {}), meta) or None

    obj, written = await kube.update_status(f"{GROUP}/{VERSION}", PLURAL, namespace, name, compute)
    if obj is None or (uid and obj.get("metadata", {}).get("uid") != uid):
        return None, None
    return obj, written


def merged(obj: Mapping[str, Any] | None, written: Mapping[str, Any] | None) -> dict:
    """Status as a write left it: the object as read, with the values written."""
    return {**((obj or {}).get("status") or {}), **(written or {})}


def transition(obj: Mapping[str, Any], written: Mapping[str, Any] | None) -> tuple[str, str, str] | None:
    """The Event a write deserves: its phase against the phase it replaced."""
    return es.transition_event((obj.get("status") or {}).get("phase"), written) if written else None


def collect(gw: EndpointGateway, namespace: str, name: str, uid: str, *, model: str, config: str) -> None:
    """Delete this resource's superseded models and configs (the old fleet's), keeping the
    serving (= desired) pair. Objects newer than the serving config are spared for a while: a
    spec change may be creating them right now, before status records its hash."""
    try:
        serving_since = gw.config_created(config)
        done = gw.delete_owned(uid, keep=(model, config), name_contains=names_prefix(namespace, name, uid),
                               spare_after=serving_since)
        if done.models or done.endpoint_configs:
            log.info("%s/%s: deleted superseded %s", namespace, name, done.endpoint_configs + done.models)
    except SageMakerError as exc:  # the next settle tries again
        log.warning("%s/%s: could not delete superseded objects: %s", namespace, name, exc)


def settle(describe: Mapping[str, Any] | None, *, namespace: str, name: str, uid: str,
           status: Mapping[str, Any], generation) -> dict:
    """Status update for one observation of the endpoint (an event's detail or DescribeEndpoint)
    against `status`; {} when stale or when it changes nothing. Pure: a `write_status` change."""
    status = dict(status or {})
    if describe is None:
        return es.gone(status, generation=generation) if status.get("endpointArn") else {}
    config, model = desired_names(namespace, name, uid, status)
    return es.observe(describe, status, desired_config=config, desired_model=model, generation=generation)


def collect_if_serving(gw: EndpointGateway, describe: Mapping[str, Any] | None, *, namespace: str, name: str,
                       uid: str, status: Mapping[str, Any]) -> None:
    """Once an observation shows the configuration status.specHash asks for in service, delete
    the superseded models and configurations. Blocking."""
    config, model = desired_names(namespace, name, uid, status or {})
    if config and describe and describe.get("EndpointStatus") == "InService" \
            and describe.get("EndpointConfigName") == config:
        collect(gw, namespace, name, uid, model=model, config=config)


def event_update(event: Mapping[str, Any], obj: Mapping[str, Any]) -> dict:
    """The status update one "SageMaker Endpoint State Change" event makes to its LlamaEndpoint
    `obj` (as read just now); {} when stale or about another endpoint."""
    meta = obj.get("metadata", {})
    status = dict(obj.get("status") or {})
    detail = event.get("detail") or {}
    if status.get("endpointName") and detail.get("EndpointName") not in (None, status["endpointName"]):
        return {}
    return settle(detail, namespace=meta.get("namespace"), name=meta.get("name"), uid=meta.get("uid"),
                  status=status, generation=meta.get("generation"))


# ---- handlers (module level; register() binds them to the app) -----------------------------

@dataclass(frozen=True)
class Bound:
    """What the handlers below work with: the app both kinds share, this kind's gateway, its waits."""
    app: Any
    gw: EndpointGateway
    timing: Timing


async def record(ctx: Bound, body, change, *, event: bool = True) -> tuple[dict | None, dict | None]:
    """`write_status` for a handler, then the Event its phase change deserves (unless the
    handler posts its own) and the phase metric. Returns what `write_status` does."""
    meta = body["metadata"]
    obj, written = await write_status(ctx.app.kube, meta["namespace"], meta["name"], meta.get("uid"), change)
    ev = transition(obj, written) if event and obj is not None else None
    if ev:
        kopf.event(body, type=ev[0], reason=ev[1], message=ev[2][:1000])
    if written and written.get("phase"):
        metrics.phase(KIND, meta["namespace"], meta["name"], written["phase"])
    return obj, written


def llama_finetunes(namespace, name, status, **_):
    """LlamaFinetunes by (namespace, name): what an endpoint `fromFinetune` needs."""
    status = status or {}
    return {(namespace, name): {"phase": status.get("phase"), "modelS3Uri": status.get("modelS3Uri"),
                                "failureReason": status.get("failureReason")}}


def send_requests(ctx: Bound, spec_model, model_uri: str, *, namespace: str, name: str, uid: str,
                  status: Mapping[str, Any], retry: int) -> tuple[Plan, dict, str]:
    """Model, config, endpoint (create, adopt, or blue/green): (plan, DescribeEndpoint after
    the requests, what was done). Blocking; raises kopf.TemporaryError to come back later."""
    plan = make_plan(spec_model, namespace=namespace, name=name, uid=uid, model_s3_uri=model_uri,
                     region=ctx.app.settings.region, s3=ctx.app.s3, source_s3_uri=ctx.app.settings.source_s3_uri)
    ctx.gw.ensure_model(plan.model_request, uid)
    ctx.gw.ensure_endpoint_config(plan.config_request, uid)
    current = ctx.gw.describe_endpoint(plan.endpoint_name)
    if current is None:
        current = ctx.gw.ensure_endpoint(plan.endpoint_request, uid)
        action = f"created endpoint {plan.endpoint_name} with configuration {plan.config_name}"
    elif current.get("EndpointConfigName") == plan.config_name:
        action = f"endpoint {plan.endpoint_name} uses configuration {plan.config_name}"
    elif (current["EndpointStatus"] == "InService" and status.get("phase") == "Degraded"
          and status.get("specHash") == plan.spec_hash):
        # Resumed after a restart: this very update failed and rolled back; trying it again
        # takes a spec change, not a restart.
        action = f"update to {plan.config_name} failed before; {current['EndpointConfigName']} serves"
    elif current["EndpointStatus"] == "InService":
        ctx.gw.update_endpoint(plan.update_request)
        current = ctx.gw.describe_endpoint(plan.endpoint_name) or current
        action = f"updating endpoint {plan.endpoint_name} to configuration {plan.config_name} (blue/green)"
    elif current["EndpointStatus"] == "Failed":
        # A Failed endpoint cannot be updated: SageMaker wants it deleted and created again.
        ctx.gw.delete_endpoint(plan.endpoint_name)
        raise kopf.TemporaryError(f"endpoint {plan.endpoint_name} failed; re-creating it with "
                                  f"{plan.config_name}", delay=ctx.timing.busy_retry)
    else:
        # SageMaker refuses a second update while one runs (real ones take minutes): ask
        # again less and less often, at most once a minute.
        raise kopf.TemporaryError(f"endpoint {plan.endpoint_name} is {current['EndpointStatus']}; "
                                  f"the change to {plan.config_name} waits for it",
                                  delay=min(backoff(ctx.timing.busy_retry, retry), 60.0))
    return plan, current, action


async def reconcile(ctx: Bound, spec, status, meta, namespace, name, uid, body, retry, llama_finetunes, **_):
    """Bring SageMaker to the spec: model, config, endpoint (create, adopt, or blue/green).
    Every status write is computed from the object as it is at the write (`record`), not
    from `status` as this handler started: SQS events may have moved it on meanwhile."""
    status = dict(status or {})
    generation = meta.get("generation")
    if meta.get("deletionTimestamp"):
        return
    try:
        spec_model = validate_spec(spec)
    except ValueError as exc:
        invalid = str(exc)

        def rejected_here(current, _):
            # An endpoint that serves an older spec keeps serving it (Degraded); else Failed.
            update = es.refused(current, invalid, serving_config=es.serving_now(current),
                                reason=es.INVALID_SPEC, generation=generation)
            update["observedGeneration"] = generation
            return update

        await record(ctx, body, clearing_refusal(rejected_here))
        return  # a new spec (an update) runs this handler again

    # Multi-tenancy: a namespace hands SageMaker only the execution roles the operator's
    # allowlist gives it. Checked before anything is created or updated; a spec fixed to an
    # allowed role (an update) runs this handler again and proceeds. An endpoint that serves
    # an older spec keeps serving it (Degraded); nothing serving: Failed.
    allowlist = getattr(ctx.app, "allowlist", None)
    denied = allowlist.check(namespace, spec.get("roleArn") or "") if allowlist is not None else None
    if denied:
        def refused(current, _):
            update = es.refused(current, denied, serving_config=es.serving_now(current), generation=generation)
            update["observedGeneration"] = generation
            return update

        # One Warning named by the cause (not the generic phase-change Event `record` posts).
        obj, written = await record(ctx, body, refused, event=False)
        kopf.event(body, type="Warning", reason=es.ROLE_NOT_ALLOWED, message=denied[:1000])
        if obj is not None:
            metrics.phase(KIND, namespace, name, merged(obj, written).get("phase"))
        return

    model_uri, reason, message = resolve_model(spec, namespace, llama_finetunes)
    if model_uri is None:
        phase = "Failed" if reason == "FinetuneFailed" else "WaitingForModel"

        def waiting(current, _):
            said = next((c.get("message") for c in current.get("conditions") or []
                         if c.get("type") == phase and c.get("status") == "True"), None)
            if current.get("phase") != phase or said != message:  # write status only when it changes
                return es.local_phase(phase, reason, message, current, generation=generation)
            return {}

        if waiting(status, meta) or _refused(status):  # as kopf saw it: no read while nothing changes
            await record(ctx, body, clearing_refusal(waiting))
        # keep looking: a failed fine-tune may be re-created under the same name
        raise kopf.TemporaryError(message, delay=ctx.timing.model_wait * (6 if phase == "Failed" else 1))

    try:
        # (with a refusal of an earlier spec lifted: this spec passed the allowlist)
        plan, described, action = await asyncio.to_thread(send_requests, ctx, spec_model, model_uri,
                                                        namespace=namespace, name=name, uid=uid,
                                                        status=without_refusal(status, generation),
                                                        retry=retry)
    except TerminalError as exc:
        code, message = exc.code, f"SageMaker rejected {exc.operation}: {exc.code}: {exc.message}"

        def rejected(current, _):
            update = es.local_phase("Failed", code, message, current, generation=generation)
            update["conditions"] = _synced(update["conditions"], True, code, message, generation)
            update["observedGeneration"] = generation
            return update

        await record(ctx, body, clearing_refusal(rejected))
        return  # no retry storm: the same request would fail again; a spec change retries
    except kopf.TemporaryError:
        if _refused(status):
            await record(ctx, body, clearing_refusal(lambda current, _: {}))
        raise
    except Exception as exc:  # throttling, 5xx, S3, network: retried, never fatal to the operator
        delay = backoff(ctx.timing.busy_retry, retry)
        reason = ("Throttled" if getattr(exc, "throttled", False)
                  else "ServiceUnavailable" if isinstance(exc, RetryableError) else "Error")
        message = f"{exc}; retrying in {delay:.0f}s (attempt {retry + 1})"
        await record(ctx, body, clearing_refusal(lambda current, _: {
            "conditions": _synced(current.get("conditions"), False, reason, message, generation)}))
        kopf.event(body, type="Warning", reason=reason, message=message[:1000])
        raise kopf.TemporaryError(message, delay=delay) from exc

    desired = {"specHash": plan.spec_hash, "modelS3Uri": plan.model_s3_uri,
               "endpointName": plan.endpoint_name, "observedGeneration": generation}

    def sent(current, _):
        # The Describe after our requests is dropped by es.observe if an event has recorded
        # a newer state meanwhile (e.g. InService while this handler waited on SageMaker).
        base = {**current, **desired}
        update = dict(desired)
        update.update(es.observe(described, base, desired_config=plan.config_name,
                                 desired_model=plan.model_name, generation=generation))
        if not base.get("modelName") and "modelName" not in update:
            update["modelName"] = plan.model_name
        update["conditions"] = _synced(update.get("conditions", current.get("conditions")), True,
                                       "RequestsSent", action, generation)
        return update

    obj, written = await record(ctx, body, clearing_refusal(sent))
    log.info("%s/%s: %s", namespace, name, action)
    if merged(obj, written).get("phase") == "InService":
        await asyncio.to_thread(collect, ctx.gw, namespace, name, uid, model=plan.model_name,
                                config=plan.config_name)


async def resync(ctx: Bound, spec, status, meta, namespace, name, uid, body, llama_finetunes, **_):
    """The fallback: DescribeEndpoint, in case an event was lost; an endpoint deleted behind
    the operator's back is created again, as the spec says."""
    status = dict(status or {})
    endpoint = status.get("endpointName")
    # (phase Deleting without a deletionTimestamp: someone else deleted the endpoint)
    if not endpoint or meta.get("deletionTimestamp") or status.get("phase") == "WaitingForModel":
        return
    try:
        describe = await asyncio.to_thread(ctx.gw.describe_endpoint, endpoint)
    except SageMakerError as exc:
        log.warning("%s/%s: resync failed: %s", namespace, name, exc)
        return
    obj, written = await record(ctx, body, lambda current, fresh: settle(
        describe, namespace=namespace, name=name, uid=uid, status=current, generation=fresh.get("generation")))
    if obj is None:
        return
    await asyncio.to_thread(collect_if_serving, ctx.gw, describe, namespace=namespace, name=name, uid=uid,
                            status=obj.get("status") or {})
    if describe is None and written:
        await reconcile(ctx, spec=spec, status=merged(obj, written), meta=meta, namespace=namespace, name=name,
                        uid=uid, body=body, retry=0, llama_finetunes=llama_finetunes)


async def finalize(ctx: Bound, spec, status, meta, namespace, name, uid, body, retry, **_):
    """Deletion policy Delete (default): the endpoint, then every config and model this
    resource owns; the finalizer goes only when SageMaker lists none of them. Retain: leave."""
    status = dict(status or {})
    if ((spec or {}).get("deletionPolicy") or "Delete") == "Retain":
        kopf.event(body, type="Normal", reason="Retained",
                   message=f"deletionPolicy Retain: endpoint {status.get('endpointName')} left in SageMaker")
        metrics.phase(KIND, namespace, name, None)
        return
    from llama_operator.plan import names

    def delete_endpoints() -> list[str]:
        owned = ctx.gw.owned(uid)
        endpoint = status.get("endpointName") or names.endpoint_name(namespace, name, uid)
        endpoints = sorted(set(owned.endpoints) | ({endpoint} if ctx.gw.describe_endpoint(endpoint) else set()))
        for ep in endpoints:
            ctx.gw.delete_endpoint(ep)
        return endpoints

    def delete_the_rest():
        ctx.gw.delete_owned(uid, endpoints=True)
        return ctx.gw.owned(uid)

    try:
        endpoints = await asyncio.to_thread(delete_endpoints)
        if endpoints:
            if status.get("phase") != "Deleting":
                message = f"deleting endpoint {', '.join(endpoints)}"
                await record(ctx, body, lambda current, _: {} if current.get("phase") == "Deleting" else
                             es.local_phase("Deleting", "Deleting", message, current,
                                            generation=meta.get("generation")))
            gone = await asyncio.to_thread(
                lambda: all(ctx.gw.wait_endpoint_gone(ep, timeout=15, interval=0.5) for ep in endpoints))
            if not gone:
                raise kopf.TemporaryError(f"waiting for endpoint {', '.join(endpoints)} to be deleted",
                                          delay=ctx.timing.delete_poll)
        left = await asyncio.to_thread(delete_the_rest)
    except SageMakerError as exc:
        raise kopf.TemporaryError(f"deleting SageMaker objects: {exc}",
                                  delay=backoff(ctx.timing.busy_retry, retry)) from exc
    if not left.empty():
        raise kopf.TemporaryError(f"still in SageMaker: {left.endpoints + left.endpoint_configs + left.models}",
                                  delay=ctx.timing.delete_poll)
    metrics.phase(KIND, namespace, name, None)
    log.info("%s/%s: SageMaker endpoint, configurations and models deleted", namespace, name)


async def on_endpoint_event(ctx: Bound, event: dict) -> None:
    """Endpoint state changes update LlamaEndpoint status at once."""
    await handle_event(ctx.gw, event, ctx.app.kube)


def register(registry: kopf.OperatorRegistry, app, *, sagemaker_client=None, timing: Timing | None = None
             ) -> EndpointGateway:
    """Add the LlamaEndpoint handlers to `registry`, bound to the `app` the LlamaFinetune handlers
    share (settings, s3, kube), and route endpoint events to them through `app.routes`. Returns the
    gateway. Idempotent per `app`: a second call (the runner and a test both registering) adds
    nothing."""
    from llama_operator.aws.clients import make_client

    if getattr(app, "endpoint_gateway", None) is not None:
        return app.endpoint_gateway
    gw = EndpointGateway(sagemaker_client or make_client("sagemaker", app.settings.region),
                         on_call=metrics.on_sagemaker_call)
    ctx = Bound(app, gw, timing or Timing())
    bound = functools.partial
    kopf.index(GROUP, VERSION, FINETUNES, registry=registry, id="llama_finetunes")(llama_finetunes)
    for on in (kopf.on.resume, kopf.on.create):
        on(*RESOURCE, registry=registry, id="reconcile")(bound(reconcile, ctx))
    kopf.on.update(*RESOURCE, registry=registry, id="reconcile", field="spec")(bound(reconcile, ctx))
    kopf.timer(*RESOURCE, registry=registry, id="resync", interval=app.settings.resync_seconds,
               initial_delay=app.settings.resync_seconds)(bound(resync, ctx))
    kopf.on.delete(*RESOURCE, registry=registry, id="finalize")(bound(finalize, ctx))
    app.routes[ENDPOINT_DETAIL_TYPE] = bound(on_endpoint_event, ctx)
    app.endpoint_gateway = gw
    return gw


async def handle_event(gw: EndpointGateway, event: Mapping[str, Any], kube) -> bool:
    """Apply one "SageMaker Endpoint State Change" event to the LlamaEndpoint its owner tags name,
    through the Kubernetes writer (`update_status`, `post_event`): the update is computed from
    the object as read for the write and computed again if another writer got there first, so
    an event never overwrites newer status. False when not ours."""
    from llama_operator.aws.events import owner_of

    detail = event.get("detail") or {}
    tags = detail.get("Tags") or {}
    if isinstance(tags, list):
        tags = {t.get("Key"): t.get("Value") for t in tags if isinstance(t, dict)}
    owner = owner_of(detail)
    if owner is None or tags.get(KIND_TAG) not in (None, KIND):
        return False
    namespace, name, uid = owner
    obj, written = await write_status(kube, namespace, name, uid,
                                      lambda status, meta: event_update(event, {"metadata": meta, "status": status}))
    if obj is None:
        return False  # deleted, or a newer object under the same name
    status = obj.get("status") or {}
    if not status.get("endpointName") or detail.get("EndpointName") in (None, status["endpointName"]):
        await asyncio.to_thread(collect_if_serving, gw, detail, namespace=namespace, name=name,
                                uid=obj["metadata"].get("uid"), status=status)
    if written and written.get("phase"):
        metrics.phase(KIND, namespace, name, written["phase"])
    ev = transition(obj, written)
    if ev:
        await kube.post_event(obj, *ev)
    return True
