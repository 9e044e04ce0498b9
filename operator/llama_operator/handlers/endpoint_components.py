"""The inference component of a LlamaEndpoint in deployment.mode inferenceComponents, blocking
(the handlers run it in a thread).

Once the endpoint (an instance pool) is in service, its model becomes one inference component;
a new model (a spec change) updates that component, one copy at a time. SageMaker sends no
state-change events for components, so the handlers call `sync` on a timer as well as after
their own requests and the endpoint's events; `status_update` turns what it saw into status."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from llama_operator.plan import components, names
from llama_operator.plan.endpoint import KIND
from llama_operator.plan.tags import owner_tags
from llama_operator.status import endpoint as es

log = logging.getLogger(__name__)

ADAPTER_FAILED = "AdapterComponentFailed"


def sync(app, spec_model, status: Mapping[str, Any], *, namespace: str, name: str, uid: str,
         config: str) -> tuple[dict | None, str | None]:
    """Create the component, or move it to the model status.specHash names, once: a model asked for
    before (status.inferenceComponent.requestedModel) is not asked for again, so an update SageMaker
    rolled back stays rolled back until the spec changes. Returns (DescribeInferenceComponent after,
    the model asked for now or None); (None, None) while there is no component (the endpoint,
    `config`'s instance pool, is not in service yet)."""
    gw = app.endpoint_gateway
    component = names.inference_component_name(namespace, name, uid)
    model = names.model_name(namespace, name, uid, status["specHash"])
    endpoint = status["endpointName"]
    seen = gw.describe_component(component)
    if seen is None:
        described = gw.describe_endpoint(endpoint) or {}
        if described.get("EndpointStatus") != "InService" or described.get("EndpointConfigName") != config:
            return None, None
        log.info("%s/%s: creating inference component %s with model %s", namespace, name, component, model)
        return gw.ensure_component(components.create_request(spec_model, component=component, endpoint=endpoint,
                                                             model_name=model, namespace=namespace, name=name,
                                                             uid=uid), uid), model
    state = seen.get("InferenceComponentStatus")
    serving = (seen.get("Specification") or {}).get("ModelName")
    asked = (status.get("inferenceComponent") or {}).get("requestedModel")
    if serving != model:
        if state == "InService" and asked != model:
            log.info("%s/%s: updating inference component %s to model %s", namespace, name, component, model)
            gw.update_component(components.update_request(spec_model, component=component, model_name=model))
            return gw.describe_component(component) or seen, model
        if state == "Failed" and asked != model:  # never served: nothing to roll from; start again
            gw.delete_component(component)
            return gw.describe_component(component), None
    elif serving == model and state == "InService" and spec_model.scaling is None:
        want = components.initial_copies(spec_model)
        copies = components.copy_counts(seen) or {}
        if copies.get("desired") != want:  # resources.instanceCount changed (nothing scales it)
            gw.update_component_copies(components.runtime_request(component, want))
            return gw.describe_component(component) or seen, None
    return seen, None


def sync_adapters(app, spec_model, status: Mapping[str, Any], base: Mapping[str, Any] | None, *, namespace: str,
                  name: str, uid: str) -> list[dict] | None:
    """Bring the adapter components on the endpoint to status.adapterArtifacts (what reconcile
    packed for model.adapters): create the missing ones once the base serves, point a changed
    one at its new pack (a failed one is deleted and made again), delete the ones no longer
    listed. Returns status.inferenceComponent.adapters: [{name, component, status, artifactUrl,
    failureReason}] of the wanted ones; None while there is no base component."""
    if base is None:
        return None
    gw, endpoint = app.endpoint_gateway, status["endpointName"]
    base_name = base["InferenceComponentName"]
    want = {names.adapter_component_name(namespace, name, uid, a["name"]): a
            for a in status.get("adapterArtifacts") or []}
    listed = {c: s for c, s in gw.component_states(endpoint).items() if c != base_name}
    for gone in sorted(set(listed) - set(want)):
        if listed[gone] != "Deleting":
            log.info("%s/%s: deleting adapter component %s", namespace, name, gone)
            gw.delete_component(gone)
    known = {a.get("component"): a for a in (status.get("inferenceComponent") or {}).get("adapters") or []}
    out = []
    for component, a in sorted(want.items()):
        url, had = a["artifactUrl"], known.get(component) or {}
        row = {"name": a["name"], "component": component}
        if listed.get(component) == "InService" and had.get("artifactUrl") == url and had.get("status") == "InService":
            out.append({**row, "status": "InService", "artifactUrl": url})  # (no Describe for a settled one)
            continue
        seen = gw.describe_component(component) if component in listed else None
        if seen is None and base.get("InferenceComponentStatus") == "InService":
            log.info("%s/%s: creating adapter component %s for adapter %s", namespace, name, component, a["name"])
            seen = gw.ensure_component(components.adapter_create_request(
                component=component, endpoint=endpoint, base=base_name, artifact_url=url,
                tags=owner_tags(KIND, namespace, name, uid, spec_model.tags)), uid)
        elif seen is not None and components.adapter_artifact(seen) != url:
            state = seen.get("InferenceComponentStatus")
            if state == "InService":
                log.info("%s/%s: adapter component %s to %s", namespace, name, component, url)
                gw.update_component(components.adapter_update_request(component=component, base=base_name,
                                                                      artifact_url=url))
                seen = gw.describe_component(component) or seen
            elif state == "Failed":  # made again from the new pack
                gw.delete_component(component)
                seen = gw.describe_component(component)
        if seen is None:
            out.append({**row, "status": "Pending"})
            continue
        row.update(status=seen.get("InferenceComponentStatus"), artifactUrl=components.adapter_artifact(seen))
        if seen.get("FailureReason") and row["status"] == "Failed":
            row["failureReason"] = seen["FailureReason"][:1000]
        out.append(row)
    return out


def status_update(seen: Mapping[str, Any] | None, status: Mapping[str, Any], *, namespace: str, name: str,
                  uid: str, generation, requested: str | None = None, adapters: list[dict] | None = None) -> dict:
    """status.inferenceComponent and the phase it implies: the model serves only when its
    component does. {} when nothing changes (or there is no component yet)."""
    if seen is None:
        return {}
    model = names.model_name(namespace, name, uid, status["specHash"])
    had = dict(status.get("inferenceComponent") or {})
    ic = {"name": seen["InferenceComponentName"], "status": seen.get("InferenceComponentStatus"),
          "modelName": (seen.get("Specification") or {}).get("ModelName")}
    copies = components.copy_counts(seen)
    if copies is not None:
        ic["copies"] = copies
    if requested or had.get("requestedModel"):
        ic["requestedModel"] = requested or had["requestedModel"]
    if adapters:
        ic["adapters"] = adapters
    phase, reason, message = _phase(seen, ic, model)
    if phase in ("Degraded", "Failed") and reason != ADAPTER_FAILED:
        ic["failedModel"] = model
    update: dict[str, Any] = {}
    if ic != had:  # (a merge patch: a field that goes is written as null)
        update["inferenceComponent"] = {**{k: None for k in had if k not in ic}, **ic}
    if status.get("phase") != phase or _ready_message(status) != message:
        patch = es.local_phase(phase, reason, message, status, generation=generation)
        patch["failureReason"] = message if phase in ("Degraded", "Failed") else None
        update.update(patch)
    if phase == "InService" and status.get("modelName") != model:
        update["modelName"] = model
    return update


def _phase(seen, ic, model: str) -> tuple[str, str, str]:
    name, state = ic["name"], ic["status"]
    copies = ic.get("copies") or {}
    failure = seen.get("FailureReason") or ""
    if state == "Failed":
        return "Failed", "ComponentFailed", f"inference component {name} failed: {failure}"
    if state == "Creating":
        return "Creating", "CreatingComponent", f"inference component {name} is starting model {model}"
    if ic.get("modelName") != model and (state != "InService" or ic.get("requestedModel") != model):
        return "Updating", "UpdatingComponent", f"inference component {name} is rolling to model {model}"
    if ic.get("modelName") != model:  # asked for, and SageMaker rolled it back
        return ("Degraded", "ComponentUpdateFailed",
                f"inference component {name} could not move to model {model} and still serves "
                f"{ic.get('modelName')}: {failure or 'the update was rolled back'}")
    adapters = ic.get("adapters") or []
    failed = [a for a in adapters if a.get("status") == "Failed"]
    if failed:
        return ("Degraded", ADAPTER_FAILED,
                "; ".join(f"adapter {a['name']} (component {a['component']}) failed: "
                          f"{a.get('failureReason') or 'no reason given'}" for a in failed)
                + f"; model {model} and the other adapters serve")
    pending = [a["name"] for a in adapters if a.get("status") != "InService"]
    if pending:
        return ("Updating", "UpdatingAdapters",
                f"inference component {name} serves model {model}; adapter component(s) of {', '.join(pending)} "
                "on the way")
    with_adapters = f" and adapter(s) {', '.join(a['name'] for a in adapters)}" if adapters else ""
    return ("InService", "ComponentInService",
            f"inference component {name} serves model {model}{with_adapters} with {copies.get('current', 0)} of "
            f"{copies.get('desired', 0)} copies")


def _ready_message(status: Mapping[str, Any]) -> str | None:
    return next((c.get("message") for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
