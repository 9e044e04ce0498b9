"""The Application Auto Scaling side of a LlamaEndpoint, blocking (the handlers run it in a thread).

spec.scaling is applied once the endpoint serves its desired configuration (and, with inference
components, once its component is in service), and again whenever the requests it makes change
(status.scaling.appliedHash). It is removed before an UpdateEndpoint (AWS refuses updates that
change a scaled variant's instance type until it is deregistered), before deletion, and when the
spec drops it; then the handlers bring the count back to resources.instanceCount as for any
endpoint without scaling (instances in place, or that many instances' worth of copies)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from llama_operator.plan import components
from llama_operator.plan import scaling as plan
from llama_operator.status.values import iso, to_epoch

log = logging.getLogger(__name__)


def requests_for(spec_model, status: Mapping[str, Any], endpoint_name: str) -> plan.ScalingRequests:
    sc = spec_model.scaling
    if components.uses_components(spec_model):
        return plan.component_requests(sc, status["inferenceComponent"]["name"], components.copy_bounds(spec_model))
    return plan.variant_requests(sc, endpoint_name)


def sync(app, spec_model, status: Mapping[str, Any], endpoint_name: str) -> dict | None:
    """Bring Application Auto Scaling to spec.scaling. Returns the status.scaling to write: a
    dict, None to remove the field, or {} when nothing changed."""
    gw = app.scaling_gateway
    had = status.get("scaling") or {}
    sc = spec_model.scaling
    if sc is None:
        if not had:
            return {}
        gw.remove(had.get("resourceId") or plan.resource_id(endpoint_name))
        log.info("%s: autoscaling removed", endpoint_name)
        return None
    requests = requests_for(spec_model, status, endpoint_name)
    h = requests.digest()
    if had.get("appliedHash") == h:
        return {}
    if had.get("resourceId") and had["resourceId"] != requests.resource_id:
        gw.remove(had["resourceId"])  # the mode changed under it
    gw.apply(requests)
    log.info("%s: autoscaling %s between %d and %d", endpoint_name, requests.resource_id,
             requests.register["MinCapacity"], requests.register["MaxCapacity"])
    return {**had, "resourceId": requests.resource_id, "minInstances": sc.min_instances,
            "maxInstances": sc.max_instances, "appliedHash": h}


def remove(app, status: Mapping[str, Any], endpoint_name: str) -> bool:
    """Deregister before an update or a deletion; True when something was registered."""
    sc = status.get("scaling")
    if not sc:
        return False
    return app.scaling_gateway.remove(sc.get("resourceId") or plan.resource_id(endpoint_name))


def last_activity(app, rid: str) -> dict | None:
    """status.scaling.lastActivity from Application Auto Scaling's newest activity."""
    act = app.scaling_gateway.last_activity(rid)
    if not act:
        return None
    started = to_epoch(act.get("StartTime"))
    out = {"description": act.get("Description", ""), "cause": act.get("Cause", ""),
           "status": act.get("StatusCode", "")}
    if started is not None:
        out["time"] = iso(started)
    return out
