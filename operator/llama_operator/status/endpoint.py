"""LlamaEndpoint status from what SageMaker says about the endpoint (pure: no I/O).

The same function takes a DescribeEndpoint response (the polling fallback) or the `detail` of a
"SageMaker Endpoint State Change" event (the main path): both carry the Describe fields. Events
spell them differently (EndpointStatus in upper snake case, "IN_SERVICE"; timestamps as epoch
milliseconds); aws/events.py turns them into the API's spelling at intake, and `observe` accepts
either spelling too (`endpoint_status_name`, `to_epoch`). Events arrive at least once and possibly
out of order, so every observation carries SageMaker's LastModifiedTime and one older than the last
one applied is dropped: status never moves backwards.

Phases (the CRD's): Pending, WaitingForModel, Creating, InService, Updating, Degraded, Failed, Deleting.
Degraded means "serving, but not what the spec asks": an update failed or was rolled back, or the
spec was refused before anything was sent (the role allowlist: reason RoleNotAllowed; the spec's
own rules: reason InvalidSpec), and the previous model and configuration keep serving.

A refusal stands until the spec changes: the Synced condition keeps the refusal's reason (no
observation writes Synced), and while it does every observation of the endpoint is told as the
refusal (Degraded while something serves, Failed otherwise), never as InService: what serves is
an older spec, not the refused one.
"""

from __future__ import annotations

from typing import Any, Mapping

from llama_operator.status.conditions import for_phase, set_condition
from llama_operator.status.values import api_spelling, iso, now_iso, to_epoch

PHASES = ("Pending", "WaitingForModel", "Creating", "InService", "Updating", "Degraded", "Failed", "Deleting")
CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "Failed", "WaitingForModel", "Synced")

# SageMaker EndpointStatus values as the API spells them (botocore's enum). EventBridge events
# spell the same values in upper snake case (IN_SERVICE, UPDATE_ROLLBACK_FAILED).
ENDPOINT_STATUSES = ("OutOfService", "Creating", "Updating", "SystemUpdating", "RollingBack", "InService",
                     "Deleting", "Failed", "UpdateRollbackFailed")
# Those that mean "the endpoint is still moving".
_MOVING = {"Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting"}
# ... and those in which a configuration answers requests (during an update or a rollback, the
# old fleet).
_SERVING = {"InService", "SystemUpdating", "Updating", "RollingBack"}
# The reasons a refused spec is recorded with (handlers/endpoint.py checks the spec and the role),
# and what the user must fix for each.
ROLE_NOT_ALLOWED = "RoleNotAllowed"
INVALID_SPEC = "InvalidSpec"
IMMUTABLE_FIELD = "ImmutableField"   # an inferenceComponents endpoint's instance pool
_FIX = {ROLE_NOT_ALLOWED: "spec.roleArn is fixed", INVALID_SPEC: "the spec is fixed",
        IMMUTABLE_FIELD: "the instance pool's fields are put back"}


def invocation_url(region: str, endpoint_name: str) -> str:
    return f"https://runtime.sagemaker.{region}.amazonaws.com/endpoints/{endpoint_name}/invocations"


def region_of(arn: str) -> str | None:
    parts = (arn or "").split(":")
    return parts[3] if len(parts) > 4 and parts[3] else None


def conditions_for(phase: str, reason: str, message: str, previous: list[Mapping[str, Any]] | None, *,
                   generation: int | None, now: str) -> list[dict]:
    """The full condition set for a phase: exactly one story told by Ready / Progressing /
    Degraded / Failed / WaitingForModel."""
    # During a blue/green update and after a rolled-back one the old fleet keeps answering.
    truth = {
        "Ready": phase in ("InService", "Degraded", "Updating"),
        "Progressing": phase in ("Pending", "WaitingForModel", "Creating", "Updating", "Deleting"),
        "Degraded": phase == "Degraded",
        "Failed": phase == "Failed",
        "WaitingForModel": phase == "WaitingForModel",
    }
    return for_phase(truth, reason, message, previous, what="endpoint", phase=phase, generation=generation,
                     now=now, optional=("Degraded", "WaitingForModel"))


def endpoint_status_name(value: Any) -> Any:
    """EndpointStatus as DescribeEndpoint spells it, from that or an event's upper snake case."""
    return api_spelling(value, ENDPOINT_STATUSES)


# ---- SageMaker -> status ---------------------------------------------------------------------

# (phase, reason) of the EndpointStatus values that mean the same whatever configuration serves
_FIXED_PHASES = {
    "Creating": ("Creating", "Creating"), "Updating": ("Updating", "Updating"),
    "RollingBack": ("Degraded", "RollingBack"), "Deleting": ("Deleting", "Deleting"),
    "OutOfService": ("Degraded", "OutOfService"), "UpdateRollbackFailed": ("Failed", "UpdateRollbackFailed"),
    "Failed": ("Failed", "EndpointFailed"),
}


# SageMaker's words when the serving container never came up; on AWS the reason (a model that is
# not there, a role that may not read it) is only in the container's log
_CONTAINER_DID_NOT_START = ("did not pass the ping health check", "Failed to download model data")


def with_hint(failure: str | None, endpoint: str | None) -> str | None:
    """SageMaker's FailureReason, with the fields to check when the container never started."""
    if not failure or not any(words in failure for words in _CONTAINER_DID_NOT_START):
        return failure
    return (f"{failure} Check that the model at spec.model.s3Uri (or spec.model.fromFinetune's model) exists and "
            f"that spec.roleArn may read it; the container's log is in CloudWatch, log group "
            f"/aws/sagemaker/Endpoints/{endpoint}.")


def phase_of(endpoint_status: str, serving_config: str | None, desired_config: str | None,
             failure_reason: str | None) -> tuple[str, str]:
    """(phase, condition reason) for a SageMaker EndpointStatus.

    InService on a configuration other than the desired one is Degraded when SageMaker reports a
    failure (a failed blue/green update rolls back and keeps the old fleet serving) and Updating
    otherwise (our UpdateEndpoint has not been seen yet)."""
    on_desired = desired_config is None or serving_config == desired_config
    if endpoint_status == "InService":
        if on_desired:
            return "InService", "EndpointInService"
        return ("Degraded", "UpdateFailed") if failure_reason else ("Updating", "UpdatePending")
    if endpoint_status == "SystemUpdating":
        return ("InService", "SystemUpdating") if on_desired else ("Updating", "SystemUpdating")
    if endpoint_status in _FIXED_PHASES:
        return _FIXED_PHASES[endpoint_status]
    return "Pending", endpoint_status or "Unknown"


def instance_counts(describe: Mapping[str, Any]) -> dict | None:
    """{current, desired} instances over the endpoint's variants, as SageMaker reports them."""
    variants = describe.get("ProductionVariants") or []
    if not variants:
        return None
    return {"current": sum(int(v.get("CurrentInstanceCount") or 0) for v in variants),
            "desired": sum(int(v.get("DesiredInstanceCount") or 0) for v in variants)}


def _message(phase: str, reason: str, name: str, serving: str | None, desired: str | None,
             failure: str | None) -> str:
    if reason == "Scaling":
        return f"endpoint {name} is serving configuration {serving} and changing its instance count"
    if phase == "InService":
        return f"endpoint {name} is serving configuration {serving}"
    if phase == "Creating":
        return f"SageMaker is creating endpoint {name} (configuration {serving})"
    if phase == "Updating":
        return f"SageMaker is moving endpoint {name} from {serving} to {desired} (blue/green)"
    if phase == "Degraded":
        why = failure or f"SageMaker reports the endpoint {reason}"
        return f"update to {desired} did not complete; {serving} keeps serving: {why}"
    if phase == "Failed":
        return f"endpoint {name} failed: {failure or reason}"
    if phase == "Deleting":
        return f"SageMaker is deleting endpoint {name}"
    return f"endpoint {name}: {reason}"


def observe(describe: Mapping[str, Any], status: Mapping[str, Any] | None, *, desired_config: str | None = None,
            desired_model: str | None = None, generation: int | None = None,
            now: str | None = None) -> dict:
    """The status patch for one observation of the endpoint, or {} when it is stale (older than
    what status already reflects) or changes nothing.

    `describe`: DescribeEndpoint output or an event's detail. `desired_config` / `desired_model`:
    the names the current spec hash gives (None: whatever serves is what is wanted)."""
    status = dict(status or {})
    seen_at = to_epoch(describe.get("LastModifiedTime"))
    last = to_epoch(status.get("lastEventTime"))
    if seen_at is not None and last is not None and seen_at < last:
        return {}
    sm_status = endpoint_status_name(describe.get("EndpointStatus", ""))
    if last is None and sm_status == "Creating" and status.get("phase") in ("InService", "Updating", "Degraded") \
            and status.get("endpointArn") == describe.get("EndpointArn"):
        # No time to compare (an API server that prunes unknown status fields drops
        # lastEventTime): an endpoint that has served never goes back to Creating, so this
        # observation is a late one.
        return {}
    serving = describe.get("EndpointConfigName")
    failure = describe.get("FailureReason") or None
    name = describe.get("EndpointName") or status.get("endpointName")
    phase, reason = phase_of(sm_status, serving, desired_config, failure)
    counts = instance_counts(describe)
    if phase == "Updating" and sm_status == "Updating" and serving == desired_config and counts \
            and counts["current"] != counts["desired"]:
        # A capacity change (autoscaling) on the configuration the spec asks for: it serves throughout.
        phase, reason = "InService", "Scaling"
    now = now or now_iso()
    refused_by, refused_for = refusal(status), refusal_reason(status)

    patch: dict[str, Any] = {"phase": phase, "endpointName": name}
    arn = describe.get("EndpointArn")
    if arn:
        patch["endpointArn"] = arn
        region = region_of(arn)
        if region and name:
            patch["invocationUrl"] = invocation_url(region, name)
    if serving:
        patch["endpointConfigName"] = serving
        if desired_config is not None and serving == desired_config and desired_model:
            patch["modelName"] = desired_model
    if seen_at is not None:
        patch["lastEventTime"] = iso(seen_at)
    if counts is not None:
        patch["instances"] = counts
    if refused_by is not None and phase != "Deleting":
        # The spec that stands was refused: what SageMaker shows is an older spec's endpoint.
        if sm_status in _SERVING and serving:
            patch.update(refused(status, refused_by, serving_config=serving, reason=refused_for,
                                 generation=generation, now=now))
        else:
            note = f"endpoint {name} is {sm_status or 'unknown'}" + (f": {failure}" if failure else "")
            patch.update(refused(status, refused_by, serving_config=None, note=note, reason=refused_for,
                                 generation=generation, now=now))
        return {} if _unchanged(patch, status) else patch
    if phase in ("Degraded", "Failed"):
        patch["failureReason"] = with_hint(failure, name) or _message(phase, reason, name, serving, desired_config,
                                                                      failure)
    elif phase == "InService":
        patch["failureReason"] = None  # a merge patch with null removes the field
    message = _message(phase, reason, name, serving, desired_config, failure)
    patch["conditions"] = conditions_for(phase, reason, message, status.get("conditions"),
                                         generation=generation, now=now)
    if _unchanged(patch, status):
        return {}
    return patch


def _unchanged(patch: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    for key, value in patch.items():
        if key == "lastEventTime":
            continue
        if key == "conditions":
            strip = lambda cs: [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in cs or []]
            if strip(value) != strip(status.get("conditions")):
                return False
        elif status.get(key) != value:
            return False
    return True


def gone(status: Mapping[str, Any] | None, *, generation: int | None = None, now: str | None = None) -> dict:
    """Status when SageMaker no longer knows the endpoint we recorded (deleted outside the operator):
    back to Pending so the next reconcile creates it again."""
    status = dict(status or {})
    now = now or now_iso()
    msg = f"endpoint {status.get('endpointName')} no longer exists in SageMaker; creating it again"
    return {"phase": "Pending", "endpointArn": None, "invocationUrl": None, "endpointConfigName": None,
            "modelName": None,
            "conditions": conditions_for("Pending", "EndpointMissing", msg, status.get("conditions"),
                                         generation=generation, now=now)}


def local_phase(phase: str, reason: str, message: str, status: Mapping[str, Any] | None, *,
                generation: int | None = None, now: str | None = None, **fields: Any) -> dict:
    """A patch for a phase the operator decides itself (Pending, WaitingForModel, Failed on bad
    input, Deleting), with its conditions."""
    assert phase in PHASES, phase
    status = dict(status or {})
    now = now or now_iso()
    patch: dict[str, Any] = {"phase": phase, **fields}
    if phase == "Failed":
        patch["failureReason"] = message
    patch["conditions"] = conditions_for(phase, reason, message, status.get("conditions"),
                                         generation=generation, now=now)
    return patch


# ---- a refused spec (the role allowlist, or the spec's own rules) --------------------------------

def _refusal_condition(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return next((c for c in (status or {}).get("conditions") or []
                 if c.get("type") == "Synced" and c.get("reason") in _FIX), None)


def refusal(status: Mapping[str, Any] | None) -> str | None:
    """The refusal's message while a refusal of the spec stands (the Synced condition has reason
    RoleNotAllowed or InvalidSpec), else None."""
    c = _refusal_condition(status)
    if c is None:
        return None
    return c.get("message") or ("spec.roleArn is not allowed" if c.get("reason") == ROLE_NOT_ALLOWED
                                else "the spec is invalid")


def refusal_reason(status: Mapping[str, Any] | None) -> str | None:
    """RoleNotAllowed or InvalidSpec while a refusal stands, else None."""
    c = _refusal_condition(status)
    return c.get("reason") if c is not None else None


def serving_now(status: Mapping[str, Any] | None) -> str | None:
    """The configuration status says answers requests (InService, Updating or Degraded on a
    recorded configuration), else None."""
    status = status or {}
    if status.get("phase") in ("InService", "Updating", "Degraded") and status.get("endpointArn"):
        return status.get("endpointConfigName") or None
    return None


def refused(status: Mapping[str, Any] | None, message: str, *, serving_config: str | None,
            note: str | None = None, reason: str | None = ROLE_NOT_ALLOWED, generation: int | None = None,
            now: str | None = None) -> dict:
    """The status update for a refused spec: `reason` RoleNotAllowed (`message`: the allowlist's,
    which names spec.roleArn and the way out) or InvalidSpec (`message` names the field). Nothing
    is sent to SageMaker for it, so:

    - `serving_config` answers requests (an older spec): Degraded with that reason (Ready stays
      True), Synced=False: SageMaker keeps serving the older spec;
    - nothing serves: Failed with that reason, Synced=True: status is all there is to it.

    Synced keeps the refusal's message: it marks the refusal as standing (`refusal`)."""
    status = dict(status or {})
    now = now or now_iso()
    reason = reason or ROLE_NOT_ALLOWED
    if serving_config:
        phase = "Degraded"
        told = (f"{message}. The spec is not applied: configuration {serving_config} keeps serving the "
                f"previous spec until {_FIX[reason]}")
    else:
        phase = "Failed"
        told = f"{message} ({note})" if note else message
    conds = conditions_for(phase, reason, told, status.get("conditions"), generation=generation, now=now)
    conds = set_condition(conds, "Synced", phase == "Failed", reason, message[:1000],
                          generation=generation, now=now)
    return {"phase": phase, "failureReason": told, "conditions": conds}


def lift_refusal(status: Mapping[str, Any] | None, *, generation: int | None = None,
                 now: str | None = None) -> dict:
    """The update that ends a standing refusal once the spec has changed and passed the allowlist
    (or fails for another reason): failureReason goes, Synced says the spec is being applied,
    and the phase says what is known before anything is sent: Updating when an older spec serves
    (the blue/green update is to come), else Pending. {} when no refusal stands."""
    status = dict(status or {})
    if refusal(status) is None:
        return {}
    now = now or now_iso()
    old = status.get("endpointConfigName") if status.get("phase") == "Degraded" else None
    if old:
        phase, reason = "Updating", "UpdatePending"
        message = f"the spec changed; configuration {old} keeps serving until the new spec replaces it"
    else:
        phase, reason = "Pending", "SpecChanged"
        message = "the spec changed; applying it"
    conds = conditions_for(phase, reason, message, status.get("conditions"), generation=generation, now=now)
    conds = set_condition(conds, "Synced", False, "SpecChanged", message, generation=generation, now=now)
    return {"phase": phase, "failureReason": None, "conditions": conds}


def transition_event(old_phase: str | None, patch: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Kubernetes Event a status change deserves, or None."""
    new = patch.get("phase")
    if not new or new == old_phase:
        return None
    cond = next((c for c in patch.get("conditions", []) if c.get("status") == "True"
                 and c.get("type") in ("Failed", "Degraded", "WaitingForModel", "Ready", "Progressing")), None)
    message = patch.get("failureReason") if new in ("Failed", "Degraded") else (cond or {}).get("message", "")
    kind = "Warning" if new in ("Failed", "Degraded") else "Normal"
    return kind, new, message or new


def is_settled(describe: Mapping[str, Any]) -> bool:
    return endpoint_status_name(describe.get("EndpointStatus")) not in _MOVING
