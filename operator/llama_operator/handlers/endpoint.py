"""kopf handlers for LlamaEndpoint: a spec becomes an LMI Model, an EndpointConfig and an Endpoint
in SageMaker; a spec change rolls blue/green to a new Model and EndpointConfig named by the spec's
hash; deletion removes everything the resource owns (found by owner tags) unless it says Retain.

The handlers send requests and record what they sent. Progress (Creating -> InService, Updating ->
InService or Degraded) arrives as "SageMaker Endpoint State Change" events from the SQS consumer
(`register` chains `app.on_event`); a timer re-reads DescribeEndpoint as the slow fallback. Both
end in `settle`, which maps the observation to status (monotonic, endpoint_status.py) and, once the
desired configuration serves, deletes the superseded models and configurations.

`register(registry, app)` is called with the LlamaFinetune handlers' `App` (settings, S3 client,
Kubernetes writer), after `finetune.register`."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import kopf

from llama_operator import endpoint_code
from llama_operator import endpoint_status as es
from llama_operator.aws.endpoints import EndpointGateway, RetryableError, SageMakerError, TerminalError

log = logging.getLogger(__name__)

GROUP, VERSION = "llamaops.dev", "v1alpha1"
PLURAL, FINETUNES = "llamaendpoints", "llamafinetunes"
RESOURCE = (GROUP, VERSION, PLURAL)
KIND = "LlamaEndpoint"
ENDPOINT_DETAIL_TYPE = "SageMaker Endpoint State Change"
MAX_RETRY_DELAY = 300.0


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
    bucket, _ = endpoint_code.split_s3(model_s3_uri)
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

def _observe_metrics(namespace: str, name: str, phase: str | None) -> None:
    try:
        from llama_operator import metrics

        metrics.observe_phase(KIND, namespace, name, phase)
    except Exception:  # metrics are optional
        pass


def _apply(patch_obj, body, status: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """Put a status update into kopf's patch and post the Event its phase change deserves;
    returns status as it will be."""
    merged = dict(status)
    if not update:
        return merged
    for key, value in update.items():
        patch_obj.status[key] = value
    merged.update(update)
    ev = es.transition_event(status.get("phase"), update)
    if ev:
        kopf.event(body, type=ev[0], reason=ev[1], message=ev[2][:1000])
    if update.get("phase"):
        _observe_metrics(body["metadata"].get("namespace"), body["metadata"].get("name"), update["phase"])
    return merged


def _synced(conditions, ok: bool, reason: str, message: str, generation) -> list[dict]:
    return es.set_condition(conditions, "Synced", ok, reason, message[:1000], generation=generation,
                            now=es.now_iso())


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


def settle(gw: EndpointGateway, describe: Mapping[str, Any] | None, *, namespace: str, name: str, uid: str,
           status: Mapping[str, Any], generation) -> dict:
    """Status update for one observation of the endpoint (an event's detail or DescribeEndpoint),
    collecting superseded objects once the desired configuration serves. {} when stale."""
    status = dict(status or {})
    if describe is None:
        return es.gone(status, generation=generation) if status.get("endpointArn") else {}
    config, model = desired_names(namespace, name, uid, status)
    update = es.observe(describe, status, desired_config=config, desired_model=model, generation=generation)
    if config and describe.get("EndpointStatus") == "InService" and describe.get("EndpointConfigName") == config:
        collect(gw, namespace, name, uid, model=model, config=config)
    return update


def on_endpoint_event(gw: EndpointGateway, event: Mapping[str, Any], obj: Mapping[str, Any]
                      ) -> tuple[dict, list[tuple[str, str, str]]]:
    """(status update for a merge patch of `status`, Events as (type, reason, message)) that one
    "SageMaker Endpoint State Change" event makes to its LlamaEndpoint `obj`; ({}, []) when
    stale or about another endpoint. Blocking (it may delete superseded objects)."""
    meta = obj.get("metadata", {})
    status = dict(obj.get("status") or {})
    detail = event.get("detail") or {}
    if status.get("endpointName") and detail.get("EndpointName") not in (None, status["endpointName"]):
        return {}, []
    update = settle(gw, detail, namespace=meta.get("namespace"), name=meta.get("name"), uid=meta.get("uid"),
                    status=status, generation=meta.get("generation"))
    if update.get("phase"):
        _observe_metrics(meta.get("namespace"), meta.get("name"), update["phase"])
    ev = es.transition_event(status.get("phase"), update) if update else None
    return update, [ev] if ev else []


# ---- handlers --------------------------------------------------------------------------------

def register(registry: kopf.OperatorRegistry, app, *, sagemaker_client=None, timing: Timing | None = None
             ) -> EndpointGateway:
    """Add the LlamaEndpoint handlers to `registry`, sharing the LlamaFinetune handlers' `app`
    (settings, s3, kube), and route endpoint events from `app.on_event`. Returns the gateway.
    Idempotent per `app`: a second call (the runner and a test both registering) adds nothing."""
    from llama_operator.aws.clients import make_client

    if getattr(app, "endpoint_gateway", None) is not None:
        return app.endpoint_gateway

    settings = app.settings
    timing = timing or Timing()

    def on_call(operation, outcome):
        try:
            from llama_operator import metrics
            metrics.SAGEMAKER_CALLS.labels(operation=operation, outcome=outcome).inc()
        except Exception:  # metrics are optional
            pass

    gw = EndpointGateway(sagemaker_client or make_client("sagemaker", settings.region), on_call=on_call)

    def backoff(retry: int) -> float:
        return min(timing.busy_retry * (2 ** min(retry, 8)), MAX_RETRY_DELAY)

    @kopf.index(GROUP, VERSION, FINETUNES, registry=registry, id="llama_finetunes")
    def llama_finetunes(namespace, name, status, **_):
        """LlamaFinetunes by (namespace, name): what an endpoint `fromFinetune` needs."""
        status = status or {}
        return {(namespace, name): {"phase": status.get("phase"), "modelS3Uri": status.get("modelS3Uri"),
                                    "failureReason": status.get("failureReason")}}

    @kopf.on.resume(*RESOURCE, registry=registry, id="reconcile")
    @kopf.on.create(*RESOURCE, registry=registry, id="reconcile")
    @kopf.on.update(*RESOURCE, registry=registry, id="reconcile", field="spec")
    def reconcile(spec, status, meta, namespace, name, uid, body, patch, retry, llama_finetunes, **_):
        """Bring SageMaker to the spec: model, config, endpoint (create, adopt, or blue/green)."""
        status = dict(status or {})
        generation = meta.get("generation")
        if meta.get("deletionTimestamp"):
            return
        try:
            spec_model = validate_spec(spec)
        except ValueError as exc:
            update = es.local_phase("Failed", "InvalidSpec", str(exc), status, generation=generation)
            update["observedGeneration"] = generation
            _apply(patch, body, status, update)
            return  # a new spec (an update) runs this handler again

        # Multi-tenancy: a namespace hands SageMaker only the execution roles the operator's
        # allowlist gives it. Checked before anything is created; a spec fixed to an allowed
        # role (an update) runs this handler again and proceeds.
        allowlist = getattr(app, "allowlist", None)
        denied = allowlist.check(namespace, spec.get("roleArn") or "") if allowlist is not None else None
        if denied:
            update = es.local_phase("Failed", "RoleNotAllowed", denied, status, generation=generation)
            update["conditions"] = _synced(update["conditions"], True, "RoleNotAllowed", denied, generation)
            update["observedGeneration"] = generation
            for key, value in update.items():
                patch.status[key] = value
            # One Warning named by the cause (not the generic phase-change Event `_apply` posts).
            kopf.event(body, type="Warning", reason="RoleNotAllowed", message=denied[:1000])
            _observe_metrics(namespace, name, "Failed")
            return
        if any(c.get("type") == "Failed" and c.get("status") == "True" and c.get("reason") == "RoleNotAllowed"
               for c in status.get("conditions") or []):
            patch.status["failureReason"] = None  # the refusal no longer holds (what follows may set a new one)
            status.pop("failureReason", None)

        model_uri, reason, message = resolve_model(spec, namespace, llama_finetunes)
        if model_uri is None:
            phase = "Failed" if reason == "FinetuneFailed" else "WaitingForModel"
            said = next((c.get("message") for c in status.get("conditions") or []
                         if c.get("type") == phase and c.get("status") == "True"), None)
            if status.get("phase") != phase or said != message:  # write status only when it changes
                _apply(patch, body, status, es.local_phase(phase, reason, message, status, generation=generation))
            # keep looking: a failed fine-tune may be re-created under the same name
            raise kopf.TemporaryError(message, delay=timing.model_wait * (6 if phase == "Failed" else 1))

        try:
            plan = make_plan(spec_model, namespace=namespace, name=name, uid=uid, model_s3_uri=model_uri,
                             region=settings.region, s3=app.s3, source_s3_uri=settings.source_s3_uri)
            gw.ensure_model(plan.model_request, uid)
            gw.ensure_endpoint_config(plan.config_request, uid)
            current = gw.describe_endpoint(plan.endpoint_name)
            if current is None:
                current = gw.ensure_endpoint(plan.endpoint_request, uid)
                action = f"created endpoint {plan.endpoint_name} with configuration {plan.config_name}"
            elif current.get("EndpointConfigName") == plan.config_name:
                action = f"endpoint {plan.endpoint_name} uses configuration {plan.config_name}"
            elif (current["EndpointStatus"] == "InService" and status.get("phase") == "Degraded"
                  and status.get("specHash") == plan.spec_hash):
                # Resumed after a restart: this very update failed and rolled back; trying it again
                # takes a spec change, not a restart.
                action = f"update to {plan.config_name} failed before; {current['EndpointConfigName']} serves"
            elif current["EndpointStatus"] == "InService":
                gw.update_endpoint(plan.update_request)
                current = gw.describe_endpoint(plan.endpoint_name) or current
                action = f"updating endpoint {plan.endpoint_name} to configuration {plan.config_name} (blue/green)"
            elif current["EndpointStatus"] == "Failed":
                # A Failed endpoint cannot be updated: SageMaker wants it deleted and created again.
                gw.delete_endpoint(plan.endpoint_name)
                raise kopf.TemporaryError(f"endpoint {plan.endpoint_name} failed; re-creating it with "
                                          f"{plan.config_name}", delay=timing.busy_retry)
            else:
                # SageMaker refuses a second update while one runs (real ones take minutes): ask
                # again less and less often, at most once a minute.
                raise kopf.TemporaryError(f"endpoint {plan.endpoint_name} is {current['EndpointStatus']}; "
                                          f"the change to {plan.config_name} waits for it",
                                          delay=min(backoff(retry), 60.0))
        except TerminalError as exc:
            message = f"SageMaker rejected {exc.operation}: {exc.code}: {exc.message}"
            update = es.local_phase("Failed", exc.code, message, status, generation=generation)
            update["conditions"] = _synced(update["conditions"], True, exc.code, message, generation)
            update["observedGeneration"] = generation
            _apply(patch, body, status, update)
            return  # no retry storm: the same request would fail again; a spec change retries
        except kopf.TemporaryError:
            raise
        except Exception as exc:  # throttling, 5xx, S3, network: retried, never fatal to the operator
            delay = backoff(retry)
            reason = ("Throttled" if getattr(exc, "throttled", False)
                      else "ServiceUnavailable" if isinstance(exc, RetryableError) else "Error")
            message = f"{exc}; retrying in {delay:.0f}s (attempt {retry + 1})"
            patch.status["conditions"] = _synced(status.get("conditions"), False, reason, message, generation)
            kopf.event(body, type="Warning", reason=reason, message=message[:1000])
            raise kopf.TemporaryError(message, delay=delay) from exc

        desired = {"specHash": plan.spec_hash, "modelS3Uri": plan.model_s3_uri,
                   "endpointName": plan.endpoint_name, "observedGeneration": generation}
        base = {**status, **desired}
        update = dict(desired)
        update.update(es.observe(current, base, desired_config=plan.config_name, desired_model=plan.model_name,
                                 generation=generation))
        if not base.get("modelName") and "modelName" not in update:
            update["modelName"] = plan.model_name
        update["conditions"] = _synced(update.get("conditions", status.get("conditions")), True, "RequestsSent",
                                       action, generation)
        merged = _apply(patch, body, status, update)
        log.info("%s/%s: %s", namespace, name, action)
        if merged.get("phase") == "InService":
            collect(gw, namespace, name, uid, model=plan.model_name, config=plan.config_name)

    @kopf.timer(*RESOURCE, registry=registry, id="resync", interval=settings.resync_seconds,
                initial_delay=settings.resync_seconds)
    def resync(spec, status, meta, namespace, name, uid, body, patch, llama_finetunes, **_):
        """The fallback: DescribeEndpoint, in case an event was lost; an endpoint deleted behind
        the operator's back is created again, as the spec says."""
        status = dict(status or {})
        endpoint = status.get("endpointName")
        # (phase Deleting without a deletionTimestamp: someone else deleted the endpoint)
        if not endpoint or meta.get("deletionTimestamp") or status.get("phase") == "WaitingForModel":
            return
        try:
            describe = gw.describe_endpoint(endpoint)
            update = settle(gw, describe, namespace=namespace, name=name, uid=uid, status=status,
                            generation=meta.get("generation"))
        except SageMakerError as exc:
            log.warning("%s/%s: resync failed: %s", namespace, name, exc)
            return
        status = _apply(patch, body, status, update)
        if describe is None and update:
            reconcile(spec=spec, status=status, meta=meta, namespace=namespace, name=name, uid=uid, body=body,
                      patch=patch, retry=0, llama_finetunes=llama_finetunes)

    @kopf.on.delete(*RESOURCE, registry=registry, id="finalize")
    def finalize(spec, status, meta, namespace, name, uid, body, patch, retry, **_):
        """Deletion policy Delete (default): the endpoint, then every config and model this
        resource owns; the finalizer goes only when SageMaker lists none of them. Retain: leave."""
        status = dict(status or {})
        if ((spec or {}).get("deletionPolicy") or "Delete") == "Retain":
            kopf.event(body, type="Normal", reason="Retained",
                       message=f"deletionPolicy Retain: endpoint {status.get('endpointName')} left in SageMaker")
            _observe_metrics(namespace, name, None)
            return
        from llama_operator.plan import names

        try:
            owned = gw.owned(uid)
            endpoint = status.get("endpointName") or names.endpoint_name(namespace, name, uid)
            endpoints = sorted(set(owned.endpoints) | ({endpoint} if gw.describe_endpoint(endpoint) else set()))
            if endpoints:
                for ep in endpoints:
                    gw.delete_endpoint(ep)
                if status.get("phase") != "Deleting":
                    _apply(patch, body, status, es.local_phase(
                        "Deleting", "Deleting", f"deleting endpoint {', '.join(endpoints)}", status,
                        generation=meta.get("generation")))
                if not all(gw.wait_endpoint_gone(ep, timeout=15, interval=0.5) for ep in endpoints):
                    raise kopf.TemporaryError(f"waiting for endpoint {', '.join(endpoints)} to be deleted",
                                              delay=timing.delete_poll)
            gw.delete_owned(uid, endpoints=True)
            left = gw.owned(uid)
        except SageMakerError as exc:
            raise kopf.TemporaryError(f"deleting SageMaker objects: {exc}", delay=backoff(retry)) from exc
        if not left.empty():
            raise kopf.TemporaryError(f"still in SageMaker: {left.endpoints + left.endpoint_configs + left.models}",
                                      delay=timing.delete_poll)
        _observe_metrics(namespace, name, None)
        log.info("%s/%s: SageMaker endpoint, configurations and models deleted", namespace, name)

    previous = getattr(app, "on_event", None)

    async def on_event(event: dict) -> None:
        """Endpoint state changes update LlamaEndpoint status at once; anything else goes on
        to the handler registered before (LlamaFinetune's)."""
        if event.get("detail-type") != ENDPOINT_DETAIL_TYPE:
            if previous is not None:
                await previous(event)
            return
        await handle_event(gw, event, app.kube)

    app.on_event = on_event
    app.endpoint_gateway = gw
    return gw


async def handle_event(gw: EndpointGateway, event: Mapping[str, Any], kube) -> bool:
    """Apply one "SageMaker Endpoint State Change" event to the LlamaEndpoint its owner tags name,
    through the Kubernetes writer (`get`, `patch_status`, `post_event`). False when not ours."""
    from llama_operator.aws.events import owner_of

    detail = event.get("detail") or {}
    tags = detail.get("Tags") or {}
    if isinstance(tags, list):
        tags = {t.get("Key"): t.get("Value") for t in tags if isinstance(t, dict)}
    owner = owner_of(detail)
    if owner is None or tags.get("llamaops.dev/kind") not in (None, KIND):
        return False
    namespace, name, uid = owner
    obj = await kube.get(f"{GROUP}/{VERSION}", PLURAL, namespace, name)
    if obj is None or (uid and obj.get("metadata", {}).get("uid") != uid):
        return False  # deleted, or a newer object under the same name
    update, events = await asyncio.to_thread(on_endpoint_event, gw, event, obj)
    if update:
        await kube.patch_status(f"{GROUP}/{VERSION}", PLURAL, namespace, name, update)
    for type_, reason, message in events:
        await kube.post_event(obj, type_, reason, message)
    return True
