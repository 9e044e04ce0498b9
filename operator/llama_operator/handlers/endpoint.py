"""kopf handlers for LlamaEndpoint: a spec becomes an LMI Model, an EndpointConfig and an Endpoint
in SageMaker; a spec change rolls blue/green to a new Model and EndpointConfig named by the spec's
hash; deletion removes everything the resource owns (found by owner tags) unless it says Retain.

The handlers send requests (endpoint_rollout.py) and record what they sent. Progress (Creating ->
InService, Updating -> InService or Degraded) arrives as "SageMaker Endpoint State Change" events
from the SQS consumer (the app routes them here by detail-type); a timer re-reads DescribeEndpoint
as the slow fallback. Both end in `settle` (status/endpoint_changes.py), which maps the
observation to status (monotonic, status/endpoint.py); once the desired configuration serves,
the superseded models and configurations are deleted.

Every status write goes through `kube.write_status`, computed from the object as read for the
write, so a handler's view from before a fast state change, or a late event, never overwrites
newer status.

`register(registry, app)` is called with the `App` the LlamaFinetune handlers share."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Mapping

import kopf

from llama_operator import metrics
from llama_operator.aws.endpoints import EndpointGateway, SageMakerError, TerminalError
from llama_operator.aws.errors import describe as describe_error
from llama_operator.aws.errors import retry_reason
from llama_operator.aws.events import owner_of
from llama_operator.aws.scaling import ScalingGateway
from llama_operator.plan import names
from llama_operator.handlers import endpoint_rollout as rollout
from llama_operator.handlers import endpoint_scaling as scaling
from llama_operator.handlers.app import App, Refused
from llama_operator.handlers.finetune import finetune_index
from llama_operator.handlers.kube import backoff, write_status
from llama_operator.kinds import ENDPOINT_DETAIL_TYPE, ENDPOINT_KIND, ENDPOINTS, GROUP, KIND_TAG, VERSION
from llama_operator.plan.model_source import ADAPTER_REFUSALS, NEEDS_A_NEW_SPEC, resolve_model
from llama_operator.spec import LlamaEndpointSpec, deletion_policy, stored_spec
from llama_operator.status import endpoint as es
from llama_operator.status.endpoint_changes import (clearing_refusal, desired_names, event_update, merged, settle,
                                                    synced_now, transition, without_refusal)

log = logging.getLogger(__name__)

PLURAL = ENDPOINTS
RESOURCE = (GROUP, VERSION, PLURAL)
KIND = ENDPOINT_KIND


async def record(app: App, body, change, *, event: bool = True) -> tuple[dict | None, dict | None]:
    """`write_status` for a handler, then the Event its phase change deserves (unless the
    handler posts its own) and the phase metric. Returns what `write_status` does."""
    meta = body["metadata"]
    obj, written = await write_status(app.kube, PLURAL, meta["namespace"], meta["name"], meta.get("uid"), change)
    ev = transition(obj, written) if event and obj is not None else None
    if ev:
        kopf.event(body, type=ev[0], reason=ev[1], message=ev[2][:1000])
    if written and written.get("phase"):
        metrics.phase(KIND, meta["namespace"], meta["name"], written["phase"])
    return obj, written


# waiting on something only the user can fix: a Warning, not the Normal phase-change Event (a
# failed fine-tune makes the endpoint Failed, whose Event is a Warning already)
_NEEDS_THE_USER = ("FinetuneNotFound", "FinetuneHasNoModel", *ADAPTER_REFUSALS)


async def reconcile(app: App, spec, status, meta, namespace, name, uid, body, retry, llama_finetunes, **_):
    """Bring SageMaker to the spec: model, config, endpoint (create, adopt, or blue/green).
    Every status write is computed from the object as it is at the write (`record`), not
    from `status` as this handler started: SQS events may have moved it on meanwhile."""
    status = dict(status or {})
    generation = meta.get("generation")
    if meta.get("deletionTimestamp"):
        return
    try:
        spec_model = app.admit(LlamaEndpointSpec, stored_spec(body), namespace)
    except Refused as exc:
        why, message = exc.reason, exc.message

        def refused(current, _):
            # An endpoint that serves an older spec keeps serving it (Degraded); else Failed.
            update = es.refused(current, message, serving_config=es.serving_now(current), reason=why,
                                generation=generation)
            update["observedGeneration"] = generation
            return update

        # One Warning named by the cause (not the generic phase-change Event `record` posts).
        obj, written = await record(app, body, clearing_refusal(refused), event=False)
        kopf.event(body, type="Warning", reason=why, message=message[:1000])
        if obj is not None:
            metrics.phase(KIND, namespace, name, merged(obj, written).get("phase"))
        return  # a new spec (an update) runs this handler again

    resolved, reason, message = resolve_model(spec, namespace, llama_finetunes)
    if resolved is None:
        phase = "Failed" if reason in NEEDS_A_NEW_SPEC else "WaitingForModel"

        def waiting(current, _):
            said = next((c.get("message") for c in current.get("conditions") or []
                         if c.get("type") == phase and c.get("status") == "True"), None)
            if current.get("phase") != phase or said != message:  # write status only when it changes
                return es.local_phase(phase, reason, message, current, generation=generation)
            return {}

        changed = waiting(status, meta)
        warn = bool(changed) and reason in _NEEDS_THE_USER  # once per change of what is wrong, not each retry
        if changed or es.refusal(status) is not None:  # as kopf saw it: no read while nothing changes
            await record(app, body, clearing_refusal(waiting), event=not warn)
        if warn:
            kopf.event(body, type="Warning", reason=reason, message=message[:1000])
        # keep looking: a failed fine-tune may be re-created under the same name
        raise kopf.TemporaryError(message, delay=app.settings.model_wait_seconds * (6 if phase == "Failed" else 1))

    try:
        # (with a refusal of an earlier spec lifted: this spec passed the allowlist)
        plan, described, action, scaling_gone = await asyncio.to_thread(rollout.send_requests, app, spec_model,
                                                                         resolved,
                                                          namespace=namespace, name=name, uid=uid,
                                                          status=without_refusal(status, generation),
                                                          retry=retry)
    except TerminalError as exc:
        code = exc.code
        message = (exc.message if exc.operation == "CopyObject"  # an adapter the endpoint cannot have
                   else f"SageMaker rejected {exc.operation}: {exc.code}: {exc.message}")

        def rejected(current, _):
            update = es.local_phase("Failed", code, message, current, generation=generation)
            update["conditions"] = synced_now(update["conditions"], True, code, message, generation)
            update["observedGeneration"] = generation
            return update

        await record(app, body, clearing_refusal(rejected))
        return  # no retry storm: the same request would fail again; a spec change retries
    except kopf.TemporaryError:
        if es.refusal(status) is not None:
            await record(app, body, clearing_refusal(lambda current, _: {}))
        raise
    except Exception as exc:  # throttling, 5xx, S3, network: retried, never fatal to the operator
        delay = backoff(app.settings.endpoint_retry_seconds, retry)
        reason = retry_reason(exc)
        message = f"{describe_error(exc)}; retrying in {delay:.0f}s (attempt {retry + 1})"
        await record(app, body, clearing_refusal(lambda current, _: {
            "conditions": synced_now(current.get("conditions"), False, reason, message, generation)}))
        kopf.event(body, type="Warning", reason=reason, message=message[:1000])
        raise kopf.TemporaryError(message, delay=delay) from exc

    desired = {"specHash": plan.spec_hash, "modelS3Uri": plan.model_s3_uri, "adapters": sorted(resolved.adapters),
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
        if scaling_gone and current.get("scaling"):
            update["scaling"] = None  # registered again once the new configuration serves
        update["conditions"] = synced_now(update.get("conditions", current.get("conditions")), True,
                                          "RequestsSent", action, generation)
        return update

    obj, written = await record(app, body, clearing_refusal(sent))
    log.info("%s/%s: %s", namespace, name, action)
    if merged(obj, written).get("phase") == "InService":
        await asyncio.to_thread(rollout.collect, app.endpoint_gateway, namespace, name, uid,
                                model=plan.model_name, config=plan.config_name)
    if obj is not None:
        await settle_scaling(app, {**obj, "status": merged(obj, written)})


def _scaling_in_play(obj: Mapping[str, Any]) -> bool:
    """Whether the endpoint has, or its spec asks for, autoscaling."""
    spec = stored_spec(obj)
    return bool((obj.get("status") or {}).get("scaling") or (isinstance(spec, Mapping) and spec.get("scaling")))


async def settle_scaling(app: App, obj: Mapping[str, Any]) -> None:
    """Once the endpoint serves the configuration its spec asks for, bring its autoscaling to
    spec.scaling (scaling.sync; no call when nothing changed). A failure is a Warning, and the
    next event or resync tries again."""
    meta, status = obj["metadata"], obj.get("status") or {}
    endpoint = status.get("endpointName")
    if meta.get("deletionTimestamp") or status.get("phase") != "InService" or not endpoint:
        return
    config, _ = desired_names(meta["namespace"], meta["name"], meta.get("uid"), status)
    if (config and status.get("endpointConfigName") != config) or not _scaling_in_play(obj):
        return  # (most endpoints: no spec check, no call, at every event)
    try:
        spec_model = app.admit(LlamaEndpointSpec, stored_spec(obj), meta["namespace"])
    except Refused:
        return
    try:
        # the count matters only when scaling goes (back to resources.instanceCount)
        describe = (await asyncio.to_thread(app.endpoint_gateway.describe_endpoint, endpoint)
                    if spec_model.scaling is None else None)
        update = await asyncio.to_thread(scaling.sync, app, spec_model, status, endpoint, describe)
    except SageMakerError as exc:
        message = f"could not apply spec.scaling to endpoint {endpoint}: {describe_error(exc)}"
        log.warning("%s/%s: %s", meta["namespace"], meta["name"], message)
        await app.kube.post_event(obj, "Warning", "ScalingFailed", message[:1000])
        return
    if update == {}:
        return
    await write_status(app.kube, PLURAL, meta["namespace"], meta["name"], meta.get("uid"),
                       lambda current, _: {"scaling": update})
    if update is None:
        await app.kube.post_event(obj, "Normal", "AutoscalingRemoved",
                                  f"autoscaling of {endpoint} removed; back to "
                                  f"{spec_model.resources.instance_count} instance(s)")
    else:
        sc = spec_model.scaling
        await app.kube.post_event(obj, "Normal", "AutoscalingApplied",
                                  f"{endpoint} scales between {sc.min_instances} and {sc.max_instances} instances "
                                  f"at {sc.target.invocations_per_instance:g} invocations a minute per instance")


async def note_scaling_activity(app: App, obj: Mapping[str, Any], written: Mapping[str, Any] | None) -> None:
    """An observation that moved the desired instance count: Application Auto Scaling's newest
    activity into status.scaling.lastActivity, and an Event saying what it did and why."""
    before = (obj.get("status") or {}).get("instances") or {}
    after = (written or {}).get("instances")
    had = (obj.get("status") or {}).get("scaling")
    if not after or not had or not before:
        return
    moved = after.get("desired") != before.get("desired")
    finished = after.get("current") != before.get("current") and \
        (had.get("lastActivity") or {}).get("status") == "InProgress"
    if not (moved or finished):
        return
    meta = obj["metadata"]
    endpoint = (obj.get("status") or {}).get("endpointName")
    try:
        activity = await asyncio.to_thread(scaling.last_activity, app, endpoint)
    except SageMakerError as exc:
        log.warning("%s/%s: could not read scaling activities: %s", meta["namespace"], meta["name"], exc)
        activity = None
    if activity:
        await write_status(app.kube, PLURAL, meta["namespace"], meta["name"], meta.get("uid"),
                           lambda current, _: {"scaling": {"lastActivity": activity}} if current.get("scaling")
                           else {})
    if moved:
        out = after["desired"] > before.get("desired", 0)
        why = f": {activity['description']} ({activity['cause']})" if activity else ""
        await app.kube.post_event(obj, "Normal", "ScaledOut" if out else "ScaledIn",
                                  f"{endpoint}: {before.get('desired')} -> {after['desired']} instances{why}"[:1000])


async def resync(app: App, spec, status, meta, namespace, name, uid, body, llama_finetunes, **_):
    """The fallback: DescribeEndpoint, in case an event was lost; an endpoint deleted behind
    the operator's back is created again, as the spec says."""
    status = dict(status or {})
    endpoint = status.get("endpointName")
    # (phase Deleting without a deletionTimestamp: someone else deleted the endpoint)
    if not endpoint or meta.get("deletionTimestamp") or status.get("phase") == "WaitingForModel":
        return
    try:
        describe = await asyncio.to_thread(app.endpoint_gateway.describe_endpoint, endpoint)
    except SageMakerError as exc:
        log.warning("%s/%s: resync failed: %s", namespace, name, exc)
        return
    obj, written = await record(app, body, lambda current, fresh: settle(
        describe, namespace=namespace, name=name, uid=uid, status=current, generation=fresh.get("generation")))
    if obj is None:
        return
    await asyncio.to_thread(rollout.collect_if_serving, app.endpoint_gateway, describe, namespace=namespace,
                            name=name, uid=uid, status=obj.get("status") or {})
    await note_scaling_activity(app, obj, written)
    await settle_scaling(app, {**obj, "status": merged(obj, written)})
    if describe is None and written:
        await reconcile(app, spec=spec, status=merged(obj, written), meta=meta, namespace=namespace, name=name,
                        uid=uid, body=body, retry=0, llama_finetunes=llama_finetunes)


async def finalize(app: App, spec, status, meta, namespace, name, uid, body, retry, **_):
    """Deletion policy Delete (default): the endpoint, then every config and model this
    resource owns; the finalizer goes only when SageMaker lists none of them. Retain: leave."""
    status = dict(status or {})
    if deletion_policy(stored_spec(body)) == "Retain":
        kopf.event(body, type="Normal", reason="Retained",
                   message=f"deletionPolicy Retain: endpoint {status.get('endpointName')} left in SageMaker")
        metrics.phase(KIND, namespace, name, None)
        return
    gw, settings = app.endpoint_gateway, app.settings
    try:
        # Autoscaling first: nothing scales an endpoint being deleted, and nothing is left registered.
        # (Only where there is or may be some: an account stack from before spec.scaling has no
        # Application Auto Scaling permissions, and deleting must not wait on them.)
        if _scaling_in_play({**body, "status": status}):
            await asyncio.to_thread(app.scaling_gateway.remove,
                                    status.get("endpointName") or names.endpoint_name(namespace, name, uid))
        endpoints = await asyncio.to_thread(rollout.delete_endpoints, gw, namespace, name, uid, status)
        if endpoints:
            if status.get("phase") != "Deleting":
                message = f"deleting endpoint {', '.join(endpoints)}"
                await record(app, body, lambda current, _: {} if current.get("phase") == "Deleting" else
                             es.local_phase("Deleting", "Deleting", message, current,
                                            generation=meta.get("generation")))
            if not await asyncio.to_thread(rollout.endpoints_gone, gw, endpoints):
                raise kopf.TemporaryError(f"waiting for endpoint {', '.join(endpoints)} to be deleted",
                                          delay=settings.delete_poll_seconds)
        left = await asyncio.to_thread(rollout.delete_the_rest, gw, uid)
    except SageMakerError as exc:
        raise kopf.TemporaryError(f"deleting SageMaker objects: {exc}",
                                  delay=backoff(settings.endpoint_retry_seconds, retry)) from exc
    if not left.empty():
        raise kopf.TemporaryError(f"still in SageMaker: {left.endpoints + left.endpoint_configs + left.models}",
                                  delay=settings.delete_poll_seconds)
    metrics.phase(KIND, namespace, name, None)
    log.info("%s/%s: SageMaker endpoint, configurations and models deleted", namespace, name)


async def on_endpoint_event(app: App, event: Mapping[str, Any]) -> bool:
    """Apply one "SageMaker Endpoint State Change" event to the LlamaEndpoint its owner tags name
    at once, through `write_status`, so an event never overwrites newer status. False when not
    ours."""
    detail = event.get("detail") or {}
    tags = detail.get("Tags") or {}
    if isinstance(tags, list):
        tags = {t.get("Key"): t.get("Value") for t in tags if isinstance(t, dict)}
    owner = owner_of(detail)
    if owner is None or tags.get(KIND_TAG) not in (None, KIND):
        return False
    namespace, name, uid = owner
    obj, written = await write_status(app.kube, PLURAL, namespace, name, uid,
                                      lambda status, meta: event_update(event, {"metadata": meta, "status": status}))
    if obj is None:
        return False  # deleted, or a newer object under the same name
    status = obj.get("status") or {}
    if not status.get("endpointName") or detail.get("EndpointName") in (None, status["endpointName"]):
        await asyncio.to_thread(rollout.collect_if_serving, app.endpoint_gateway, detail, namespace=namespace,
                                name=name, uid=obj["metadata"].get("uid"), status=status)
    if written and written.get("phase"):
        metrics.phase(KIND, namespace, name, written["phase"])
    ev = transition(obj, written)
    if ev:
        await app.kube.post_event(obj, *ev)
    await note_scaling_activity(app, obj, written)
    await settle_scaling(app, {**obj, "status": merged(obj, written)})
    return True


def register(registry: kopf.OperatorRegistry, app: App, *, sagemaker_client=None) -> EndpointGateway:
    """Add the LlamaEndpoint handlers to `registry`, bound to the `app` the LlamaFinetune handlers
    share, and route endpoint events to them through `app.routes`. Returns the gateway.
    Idempotent per `app`: a second call (the runner and a test both registering) adds nothing."""
    from llama_operator.aws.clients import make_client

    if app.endpoint_gateway is not None:
        return app.endpoint_gateway
    # one SageMaker client for both kinds (clients are thread-safe): each holds its own parse of
    # SageMaker's API model, tens of MB
    client = sagemaker_client or (app.sagemaker.client if app.sagemaker is not None
                                  else make_client("sagemaker", app.settings.region))
    app.endpoint_gateway = EndpointGateway(client, on_call=metrics.on_sagemaker_call)
    if app.scaling_gateway is None:
        app.scaling_gateway = ScalingGateway(make_client("application-autoscaling", app.settings.region),
                                             on_call=metrics.on_sagemaker_call)
    bound = functools.partial
    finetune_index(registry)
    for on in (kopf.on.resume, kopf.on.create):
        on(*RESOURCE, registry=registry, id="reconcile")(bound(reconcile, app))
    kopf.on.update(*RESOURCE, registry=registry, id="reconcile", field="spec")(bound(reconcile, app))
    kopf.timer(*RESOURCE, registry=registry, id="resync", interval=app.settings.resync_seconds,
               initial_delay=app.settings.resync_seconds)(bound(resync, app))
    kopf.on.delete(*RESOURCE, registry=registry, id="finalize")(bound(finalize, app))
    app.routes[ENDPOINT_DETAIL_TYPE] = bound(on_endpoint_event, app)
    return app.endpoint_gateway
