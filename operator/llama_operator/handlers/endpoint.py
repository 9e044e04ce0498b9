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
from llama_operator.plan import scaling as plan_scaling
from llama_operator.handlers import endpoint_components as components
from llama_operator.handlers import endpoint_rollout as rollout
from llama_operator.handlers import endpoint_scaling as scaling
from llama_operator.handlers.app import App, Refused
from llama_operator.handlers.finetune import finetune_index
from llama_operator.handlers.kube import backoff, write_status
from llama_operator.kinds import ENDPOINT_DETAIL_TYPE, ENDPOINT_KIND, ENDPOINTS, GROUP, KIND_TAG, VERSION
from llama_operator.plan import components as plan_components
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
        _check_pool_unchanged(spec_model, status)
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
        message = (exc.message if exc.code == rollout.ADAPTER_NOT_FOUND  # an adapter the endpoint cannot have
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
               "endpointName": plan.endpoint_name, "observedGeneration": generation, "configHash": plan.config_hash,
               # mode inferenceComponents: model.adapters' packs, made into adapter components by settle_component
               "adapterArtifacts": [{"name": n, "artifactUrl": u} for n, u in sorted(plan.adapter_artifacts.items())]
               or None}

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
    if merged(obj, written).get("phase") == "InService" and plan.component is None:
        await asyncio.to_thread(rollout.collect, app.endpoint_gateway, namespace, name, uid,
                                model=plan.model_name, config=plan.config_name)
    if obj is not None:
        obj = await settle_component(app, {**obj, "status": merged(obj, written)})
        await settle_scaling(app, obj)


MSG_POOL_FIXED = ("deployment.mode inferenceComponents: the endpoint's instance pool (deployment.mode, "
                  "resources.instanceType, roleArn) cannot change once it exists; put them back, or delete and "
                  "re-create the LlamaEndpoint")


def _check_pool_unchanged(spec_model, status: Mapping[str, Any]) -> None:
    """A component endpoint keeps its instance pool: refuse a spec that would change it, or the mode.
    (What AWS does to components on an UpdateEndpoint of their pool is not something to rely on.)"""
    if not status.get("endpointArn") or not status.get("specHash"):
        return
    had = status.get("configHash")
    want = plan_components.config_hash(spec_model) if plan_components.uses_components(spec_model) else None
    if had != want:
        raise Refused(es.IMMUTABLE_FIELD, MSG_POOL_FIXED if had else
                      "deployment.mode cannot change from variant to inferenceComponents on an existing endpoint: "
                      "put it back, or delete and re-create the LlamaEndpoint")


async def settle_component(app: App, obj: Mapping[str, Any], *, collect: bool = False) -> Mapping[str, Any]:
    """Mode inferenceComponents: create or update the endpoint's component (components.sync) and
    write what it shows to status. Returns the object as written. Superseded models and configs
    are collected when the component has just come to serve the desired model, or on `collect`
    (the resync), not at every read."""
    meta, status = obj["metadata"], obj.get("status") or {}
    if meta.get("deletionTimestamp") or not status.get("configHash") or not status.get("endpointName") \
            or status.get("phase") in ("Deleting", "WaitingForModel", "Pending"):
        return obj
    try:
        spec_model = app.admit(LlamaEndpointSpec, stored_spec(obj), meta["namespace"])
        _check_pool_unchanged(spec_model, status)
    except Refused:
        return obj
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    config, model = desired_names(namespace, name, uid, status)
    try:
        seen, requested = await asyncio.to_thread(components.sync, app, spec_model, status, namespace=namespace,
                                                  name=name, uid=uid, config=config)
        adapters = await asyncio.to_thread(components.sync_adapters, app, spec_model, status, seen,
                                           namespace=namespace, name=name, uid=uid)
    except SageMakerError as exc:
        message = f"inference component of {status['endpointName']}: {describe_error(exc)}"
        log.warning("%s/%s: %s", namespace, name, message)
        await app.kube.post_event(obj, "Warning", "ComponentRequestFailed", message[:1000])
        return obj
    before = (status.get("inferenceComponent") or {}).get("copies") or {}
    # (not `record`: this runs from the events queue and timers too, outside kopf's handler context)
    new, written = await write_status(app.kube, PLURAL, namespace, name, uid, lambda current, fresh: (
        components.status_update(seen, current, namespace=namespace, name=name, uid=uid,
                                 generation=fresh.get("generation"), requested=requested, adapters=adapters)))
    if new is None:
        return obj
    ev = transition(new, written)
    if ev:
        await app.kube.post_event(new, *ev)
    if written and written.get("phase"):
        metrics.phase(KIND, namespace, name, written["phase"])
    new = {**new, "status": merged(new, written)}
    ic = new["status"].get("inferenceComponent") or {}
    arrived = bool(written) and ("modelName" in written or written.get("phase") == "InService")
    if ic.get("status") == "InService" and ic.get("modelName") == model and (collect or arrived):
        await asyncio.to_thread(rollout.collect, app.endpoint_gateway, namespace, name, uid, model=model,
                                config=config, component=True)
    after = ic.get("copies") or {}
    if before and after and after.get("desired") != before.get("desired") and status.get("scaling"):
        await _note_activity(app, new, "copies", before.get("desired"), after["desired"])
    return await _follow_the_pool(app, new, spec_model)


async def _follow_the_pool(app: App, obj: Mapping[str, Any], spec_model) -> Mapping[str, Any]:
    """Managed instance scaling follows the copies, and may send no event when it does: while
    status.instances disagrees with what the copies need, read the endpoint for them."""
    status = obj["status"]
    have, copies = status.get("instances") or {}, (status.get("inferenceComponent") or {}).get("copies")
    if not have or not copies:
        return obj
    need = -(-copies["desired"] // spec_model.copy_shape().per_instance)
    if have.get("current") == have.get("desired") == need:
        return obj
    try:
        counts = es.instance_counts(await asyncio.to_thread(app.endpoint_gateway.describe_endpoint,
                                                            status["endpointName"]) or {})
    except SageMakerError as exc:
        log.warning("%s: could not read the instance count: %s", status["endpointName"], exc)
        return obj
    if counts is None or counts == have:
        return obj
    meta = obj["metadata"]
    new, written = await write_status(app.kube, PLURAL, meta["namespace"], meta["name"], meta.get("uid"),
                                      lambda current, _: {"instances": counts})
    return {**new, "status": merged(new, written)} if new is not None else obj


async def _settle_count(app: App, obj: Mapping[str, Any]) -> None:
    """Without autoscaling the count is resources.instanceCount, changed in place (it is not part
    of the serving hash: no new fleet for it). Components' copies follow it in components.sync."""
    status, spec = obj.get("status") or {}, stored_spec(obj)
    have = (status.get("instances") or {}).get("desired")
    want = ((spec.get("resources") or {}) if isinstance(spec, Mapping) else {}).get("instanceCount", 1)
    if status.get("configHash") or have is None or have == want or not isinstance(want, int):
        return
    endpoint = status["endpointName"]
    try:
        await asyncio.to_thread(app.endpoint_gateway.update_capacity, plan_scaling.capacity_request(endpoint, want))
    except SageMakerError as exc:
        await app.kube.post_event(obj, "Warning", "ScalingFailed",
                                  f"could not set {endpoint} to {want} instance(s): {describe_error(exc)}"[:1000])
        return
    log.info("%s/%s: %s set to %d instance(s)", obj["metadata"]["namespace"], obj["metadata"]["name"], endpoint, want)
    await app.kube.post_event(obj, "Normal", "ScaledOut" if want > have else "ScaledIn",
                              f"{endpoint}: {have} -> {want} instances (resources.instanceCount)")


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
    if config and status.get("endpointConfigName") != config:
        return
    if not _scaling_in_play(obj):
        await _settle_count(app, obj)  # (most endpoints: no spec check, no call, at every event)
        return
    ic = status.get("inferenceComponent") or {}
    if status.get("configHash") and ic.get("status") != "InService":
        return  # the component is the scalable target: it must be there and settled
    try:
        spec_model = app.admit(LlamaEndpointSpec, stored_spec(obj), meta["namespace"])
    except Refused:
        return
    try:
        update = await asyncio.to_thread(scaling.sync, app, spec_model, status, endpoint)
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
        # back to resources.instanceCount, as any endpoint without scaling is kept at it
        unscaled = {**obj, "status": {**status, "scaling": None}}
        if status.get("configHash"):
            await settle_component(app, unscaled)
        else:
            await _settle_count(app, unscaled)
    else:
        sc = spec_model.scaling
        if sc.target.concurrent_requests_per_copy is not None:
            low, high = plan_components.copy_bounds(spec_model)
            how = (f"{ic['name']} scales between {low} and {high} copies ({sc.min_instances} to {sc.max_instances} "
                   f"instances) at {sc.target.concurrent_requests_per_copy:g} requests in flight per copy"
                   + ("; a request that finds no copy brings one back" if low == 0 else ""))
        else:
            how = (f"{endpoint} scales between {sc.min_instances} and {sc.max_instances} instances "
                   f"at {sc.target.invocations_per_instance:g} invocations a minute per instance")
        await app.kube.post_event(obj, "Normal", "AutoscalingApplied", how)


async def note_scaling_activity(app: App, obj: Mapping[str, Any], written: Mapping[str, Any] | None) -> None:
    """An observation that moved the desired instance count: Application Auto Scaling's newest
    activity into status.scaling.lastActivity, and an Event saying what it did and why."""
    before = (obj.get("status") or {}).get("instances") or {}
    after = (written or {}).get("instances")
    had = (obj.get("status") or {}).get("scaling")
    if not after or not had or not before or (obj.get("status") or {}).get("configHash"):
        return  # (with components, instances follow the copies: settle_component tells of those)
    moved = after.get("desired") != before.get("desired")
    finished = after.get("current") != before.get("current") and \
        (had.get("lastActivity") or {}).get("status") == "InProgress"
    if not (moved or finished):
        return
    await _note_activity(app, obj, "instances", before.get("desired"), after["desired"] if moved else None)


async def _note_activity(app: App, obj: Mapping[str, Any], unit: str, before: int | None, after: int | None) -> None:
    """Application Auto Scaling's newest activity into status.scaling.lastActivity, and, when the
    desired count moved (`after` not None), an Event saying what it did and why."""
    meta, status = obj["metadata"], obj.get("status") or {}
    endpoint = status.get("endpointName")
    rid = (status.get("scaling") or {}).get("resourceId") or plan_scaling.resource_id(endpoint)
    try:
        activity = await asyncio.to_thread(scaling.last_activity, app, rid)
    except SageMakerError as exc:
        log.warning("%s/%s: could not read scaling activities: %s", meta["namespace"], meta["name"], exc)
        activity = None
    if activity:
        await write_status(app.kube, PLURAL, meta["namespace"], meta["name"], meta.get("uid"),
                           lambda current, _: {"scaling": {"lastActivity": activity}} if current.get("scaling")
                           else {})
    if after is not None:
        out = after > (before or 0)
        why = f": {activity['description']} ({activity['cause']})" if activity else ""
        what = rid.split("/", 1)[1] if unit == "copies" else endpoint
        await app.kube.post_event(obj, "Normal", "ScaledOut" if out else "ScaledIn",
                                  f"{what}: {before} -> {after} {unit}{why}"[:1000])


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
    await settle_scaling(app, await settle_component(app, {**obj, "status": merged(obj, written)}, collect=True))
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
            rid = (status.get("scaling") or {}).get("resourceId") or (
                plan_scaling.component_resource_id(names.inference_component_name(namespace, name, uid))
                if status.get("configHash") else
                plan_scaling.resource_id(status.get("endpointName") or names.endpoint_name(namespace, name, uid)))
            await asyncio.to_thread(app.scaling_gateway.remove, rid)
        # SageMaker deletes an endpoint only once the components on it are gone
        left_on = await asyncio.to_thread(rollout.delete_components, gw, namespace, name, uid, status)
        if left_on:
            raise kopf.TemporaryError(f"waiting for inference component {', '.join(left_on)} to be deleted",
                                      delay=settings.delete_poll_seconds)
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
    await settle_scaling(app, await settle_component(app, {**obj, "status": merged(obj, written)}))
    return True


async def poll_component(app: App, body, meta, status, **_):
    """Components send no events: follow their status and copies (and the scaling that moves them)."""
    if not (status or {}).get("configHash") or meta.get("deletionTimestamp"):
        return
    await settle_scaling(app, await settle_component(app, dict(body)))


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
                                             cloudwatch=make_client("cloudwatch", app.settings.region),
                                             on_call=metrics.on_sagemaker_call)
    bound = functools.partial
    finetune_index(registry)
    for on in (kopf.on.resume, kopf.on.create):
        on(*RESOURCE, registry=registry, id="reconcile")(bound(reconcile, app))
    kopf.on.update(*RESOURCE, registry=registry, id="reconcile", field="spec")(bound(reconcile, app))
    kopf.timer(*RESOURCE, registry=registry, id="resync", interval=app.settings.resync_seconds,
               initial_delay=app.settings.resync_seconds)(bound(resync, app))
    kopf.timer(*RESOURCE, registry=registry, id="components", interval=app.settings.component_poll_seconds,
               when=lambda status, **_: bool((status or {}).get("configHash")))(bound(poll_component, app))
    kopf.on.delete(*RESOURCE, registry=registry, id="finalize")(bound(finalize, app))
    app.routes[ENDPOINT_DETAIL_TYPE] = bound(on_endpoint_event, app)
    return app.endpoint_gateway
