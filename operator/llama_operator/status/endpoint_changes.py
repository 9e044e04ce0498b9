"""The changes LlamaEndpoint handlers hand to the status writer (`handlers.kube.write_status`):
pure functions of status as it is at the write, so a change computed from an observation never
lands on status newer than what it was computed for."""

from __future__ import annotations

from typing import Any, Mapping

from llama_operator.plan import names
from llama_operator.status import endpoint as es
from llama_operator.status.conditions import synced
from llama_operator.status.values import now_iso


def synced_now(conditions, ok: bool, reason: str, message: str, generation) -> list[dict]:
    return synced(conditions, ok, reason, message, generation=generation, now=now_iso())


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


def merged(obj: Mapping[str, Any] | None, written: Mapping[str, Any] | None) -> dict:
    """Status as a write left it: the object as read, with the values written."""
    return {**((obj or {}).get("status") or {}), **(written or {})}


def transition(obj: Mapping[str, Any], written: Mapping[str, Any] | None) -> tuple[str, str, str] | None:
    """The Event a write deserves: its phase against the phase it replaced."""
    return es.transition_event((obj.get("status") or {}).get("phase"), written) if written else None


def desired_names(namespace: str, name: str, uid: str, status: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(config, model) that status.specHash asks for (the config by status.configHash where the
    endpoint hosts an inference component); (None, None) before any was planned."""
    h = status.get("specHash")
    if not h:
        return None, None
    return (names.endpoint_config_name(namespace, name, uid, status.get("configHash") or h),
            names.model_name(namespace, name, uid, h))


def settle(describe: Mapping[str, Any] | None, *, namespace: str, name: str, uid: str,
           status: Mapping[str, Any], generation) -> dict:
    """Status update for one observation of the endpoint (an event's detail or DescribeEndpoint)
    against `status`; {} when stale or when it changes nothing."""
    status = dict(status or {})
    if describe is None:
        return es.gone(status, generation=generation) if status.get("endpointArn") else {}
    config, model = desired_names(namespace, name, uid, status)
    return es.observe(describe, status, desired_config=config, desired_model=model, generation=generation)


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
