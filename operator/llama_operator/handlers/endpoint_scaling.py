"""The Application Auto Scaling side of a LlamaEndpoint, blocking (the handlers run it in a thread).

spec.scaling is applied once the endpoint serves its desired configuration, and again whenever the
requests it makes change (status.scaling.appliedHash). It is removed before an UpdateEndpoint (AWS
refuses updates that change a scaled variant's instance type until it is deregistered), before
DeleteEndpoint, and when the spec drops it; then the count goes back to resources.instanceCount."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from llama_operator.plan import scaling as plan
from llama_operator.status.endpoint import instance_counts
from llama_operator.status.values import iso, to_epoch

log = logging.getLogger(__name__)


def sync(app, spec_model, status: Mapping[str, Any], endpoint_name: str,
         describe: Mapping[str, Any] | None) -> dict | None:
    """Bring Application Auto Scaling to spec.scaling. Returns the status.scaling to write: a
    dict, None to remove the field, or {} when nothing changed."""
    gw = app.scaling_gateway
    had = status.get("scaling") or {}
    sc = spec_model.scaling
    if sc is None:
        if not had:
            return {}
        gw.remove(endpoint_name)
        want = spec_model.resources.instance_count
        now = instance_counts(describe or {})
        if now is not None and now["desired"] != want and (describe or {}).get("EndpointStatus") == "InService":
            app.endpoint_gateway.update_capacity(plan.capacity_request(endpoint_name, want))
        log.info("%s: autoscaling removed; back to %d instance(s)", endpoint_name, want)
        return None
    h = plan.applied_hash(sc, endpoint_name)
    if had.get("appliedHash") == h:
        return {}
    gw.apply(plan.register_request(sc, endpoint_name), plan.policy_request(sc, endpoint_name))
    log.info("%s: autoscaling between %d and %d instances at %g invocations a minute per instance",
             endpoint_name, sc.min_instances, sc.max_instances, sc.target.invocations_per_instance)
    return {**had, "resourceId": plan.resource_id(endpoint_name), "minInstances": sc.min_instances,
            "maxInstances": sc.max_instances, "appliedHash": h}


def remove(app, status: Mapping[str, Any], endpoint_name: str) -> bool:
    """Deregister before an update or a deletion; True when something was registered."""
    if not status.get("scaling"):
        return False
    return app.scaling_gateway.remove(endpoint_name)


def last_activity(app, endpoint_name: str) -> dict | None:
    """status.scaling.lastActivity from Application Auto Scaling's newest activity."""
    act = app.scaling_gateway.last_activity(endpoint_name)
    if not act:
        return None
    started = to_epoch(act.get("StartTime"))
    out = {"description": act.get("Description", ""), "cause": act.get("Cause", ""),
           "status": act.get("StatusCode", "")}
    if started is not None:
        out["time"] = iso(started)
    return out
