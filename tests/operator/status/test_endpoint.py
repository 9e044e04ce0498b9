"""LlamaEndpoint status from DescribeEndpoint output and endpoint state-change event details, and refusals."""

import datetime as dt

import pytest

from llama_operator.status import endpoint as es
from llama_operator.status import endpoint_changes
from llama_operator.status import values

ARN = "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/lep-demo-abc"
NOW = "2026-11-24T10:00:00.000Z"
BASE = 1_795_000_000.0  # realistic epoch seconds: millis and seconds must not be confused


def describe(status, config="cfg-new", t=1000.0, reason=None, **extra):
    d = {"EndpointName": "lep-demo-abc", "EndpointArn": ARN, "EndpointConfigName": config,
         "EndpointStatus": status, "LastModifiedTime": dt.datetime.fromtimestamp(BASE + t, dt.timezone.utc),
         "CreationTime": dt.datetime.fromtimestamp(900, dt.timezone.utc)}
    if reason:
        d["FailureReason"] = reason
    d.update(extra)
    return d


def event_detail(status, config="cfg-new", t=1000.0, reason=None):
    d = describe(status, config, reason=reason)
    d["LastModifiedTime"] = int((BASE + t) * 1000)  # EventBridge: epoch millis
    d["CreationTime"] = 900_000
    return d


def cond(patch, type_):
    return next(c for c in patch["conditions"] if c["type"] == type_)


def apply(status, patch):
    out = dict(status)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def test_in_service_on_desired_config_sets_name_arn_url_and_ready():
    p = es.observe(describe("InService"), {}, desired_config="cfg-new", desired_model="m-new", generation=3, now=NOW)
    assert p["phase"] == "InService"
    assert p["endpointName"] == "lep-demo-abc" and p["endpointArn"] == ARN
    assert p["invocationUrl"] == ("https://runtime.sagemaker.eu-west-1.amazonaws.com/endpoints/"
                                  "lep-demo-abc/invocations")
    assert p["endpointConfigName"] == "cfg-new" and p["modelName"] == "m-new"
    ready = cond(p, "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 3 and ready["lastTransitionTime"] == NOW
    assert cond(p, "Progressing")["status"] == "False"
    assert cond(p, "Failed")["status"] == "False"


def test_creating_is_progressing_not_ready():
    p = es.observe(describe("Creating"), {}, desired_config="cfg-new", now=NOW)
    assert p["phase"] == "Creating"
    assert cond(p, "Progressing")["status"] == "True"
    assert cond(p, "Ready")["status"] == "False"


def test_event_detail_in_millis_equals_describe():
    a = es.observe(describe("InService", t=1234.5), {}, desired_config="cfg-new", now=NOW)
    b = es.observe(event_detail("InService", t=1234.5), {}, desired_config="cfg-new", now=NOW)
    assert a == b
    assert a["lastEventTime"] == values.iso(BASE + 1234.5) and a["lastEventTime"].endswith(".500Z")


def test_failed_update_rolled_back_is_degraded_with_sagemakers_reason_and_old_names_kept():
    status = {"phase": "Updating", "endpointConfigName": "cfg-old", "modelName": "m-old",
              "lastEventTime": values.iso(BASE + 1000)}
    reason = "Failed to update endpoint: The primary container for production variant AllTraffic did not pass the ping health check."
    p = es.observe(describe("InService", config="cfg-old", t=1100, reason=reason), status,
                   desired_config="cfg-new", desired_model="m-new", now=NOW)
    assert p["phase"] == "Degraded"
    assert p["failureReason"].startswith(reason)
    assert p["endpointConfigName"] == "cfg-old"
    assert "modelName" not in p  # the old model keeps serving; status still names it
    assert cond(p, "Degraded")["status"] == "True" and reason in cond(p, "Degraded")["message"]
    assert cond(p, "Ready")["status"] == "True"  # the old fleet still answers


def test_success_after_degraded_clears_failure_reason():
    status = {"phase": "Degraded", "failureReason": "x", "endpointConfigName": "cfg-old",
              "lastEventTime": values.iso(BASE + 1000),
              "conditions": [{"type": "Degraded", "status": "True", "reason": "UpdateFailed", "message": "x",
                              "lastTransitionTime": "2026-11-24T09:00:00.000Z"}]}
    p = es.observe(describe("InService", config="cfg-new", t=1200), status, desired_config="cfg-new",
                   desired_model="m-new", now=NOW)
    assert p["phase"] == "InService" and p["failureReason"] is None and p["modelName"] == "m-new"
    degraded = cond(p, "Degraded")
    assert degraded["status"] == "False" and degraded["lastTransitionTime"] == NOW


def test_in_service_on_old_config_without_failure_means_update_pending():
    p = es.observe(describe("InService", config="cfg-old"), {}, desired_config="cfg-new", now=NOW)
    assert p["phase"] == "Updating"


@pytest.mark.parametrize("sm,phase", [("Updating", "Updating"), ("SystemUpdating", "InService"),
                                      ("RollingBack", "Degraded"), ("OutOfService", "Degraded"),
                                      ("Deleting", "Deleting"), ("Failed", "Failed"),
                                      ("UpdateRollbackFailed", "Failed")])
def test_every_sagemaker_status_maps_to_a_crd_phase(sm, phase):
    p = es.observe(describe(sm, reason="boom" if sm != "Updating" else None), {}, desired_config="cfg-new", now=NOW)
    assert p["phase"] == phase
    assert p["phase"] in es.PHASES
    if phase in ("Failed", "Degraded"):
        assert p["failureReason"]


def test_create_failure_reports_reason():
    reason = "The primary container for production variant AllTraffic did not pass the ping health check."
    p = es.observe(describe("Failed", reason=reason), {}, desired_config="cfg-new", now=NOW)
    assert p["phase"] == "Failed" and p["failureReason"].startswith(reason)
    assert cond(p, "Failed")["status"] == "True" and cond(p, "Ready")["status"] == "False"


def test_a_container_that_never_started_names_the_fields_to_check():
    """On AWS a missing model bucket shows only as a failed health check: status says where to look."""
    reason = "The primary container for production variant AllTraffic did not pass the ping health check."
    told = es.observe(describe("Failed", reason=reason), {}, desired_config="cfg-new", now=NOW)["failureReason"]
    assert "spec.model.s3Uri" in told and "spec.roleArn" in told and "/aws/sagemaker/Endpoints/lep-demo-abc" in told
    other = "ResourceLimitExceeded: the account-level service limit for ml.g5.2xlarge is 0 instances"
    assert es.observe(describe("Failed", reason=other), {}, desired_config="cfg-new", now=NOW)["failureReason"] == other


def test_late_event_never_moves_status_backwards():
    status = {}
    for d in [event_detail("Creating", t=100), event_detail("InService", t=200)]:
        status = apply(status, es.observe(d, status, desired_config="cfg-new", now=NOW))
    assert status["phase"] == "InService"
    # the Creating event delivered again, late
    assert es.observe(event_detail("Creating", t=100), status, desired_config="cfg-new", now=NOW) == {}
    assert status["phase"] == "InService"


def test_late_creating_event_dropped_even_without_last_event_time():
    status = apply({}, es.observe(event_detail("InService", t=200), {}, desired_config="cfg-new", now=NOW))
    status.pop("lastEventTime")  # what an API server that prunes unknown status fields leaves
    assert es.observe(event_detail("Creating", t=100), status, desired_config="cfg-new", now=NOW) == {}


def test_duplicate_event_changes_nothing():
    status = apply({}, es.observe(event_detail("InService", t=200), {}, desired_config="cfg-new", now=NOW))
    assert es.observe(event_detail("InService", t=200), status, desired_config="cfg-new",
                      now="2026-11-24T11:00:00.000Z") == {}


def test_out_of_order_update_events_end_in_the_newest_state():
    events = [event_detail("Creating", "cfg-old", 100), event_detail("InService", "cfg-old", 200),
              event_detail("Updating", "cfg-old", 300), event_detail("InService", "cfg-new", 400)]
    status = {}
    for d in [events[0], events[3], events[2], events[1]]:  # shuffled delivery
        status = apply(status, es.observe(d, status, desired_config="cfg-new", desired_model="m-new", now=NOW))
    assert status["phase"] == "InService" and status["endpointConfigName"] == "cfg-new"
    assert status["modelName"] == "m-new"


def test_condition_transition_time_kept_while_status_unchanged():
    s1 = apply({}, es.observe(describe("Updating", t=100), {}, desired_config="cfg-new", now=NOW))
    later = "2026-11-24T10:05:00.000Z"
    s2 = apply(s1, es.observe(describe("InService", config="cfg-old", t=150), s1, desired_config="cfg-new",
                              now=later))
    assert cond(s2, "Ready")["lastTransitionTime"] == NOW  # was True, is True


def test_local_phase_waiting_for_model():
    p = es.local_phase("WaitingForModel", "FinetuneNotCompleted", "waiting for LlamaFinetune tiny (InProgress)",
                       {}, generation=1, now=NOW)
    assert p["phase"] == "WaitingForModel"
    w = cond(p, "WaitingForModel")
    assert w["status"] == "True" and "tiny" in w["message"]
    assert cond(p, "Ready")["status"] == "False"
    # once the model is there the condition flips to False, it does not linger as True
    p2 = es.observe(describe("Creating"), apply({}, p), desired_config="cfg-new", now=NOW)
    assert cond(p2, "WaitingForModel")["status"] == "False"


def test_local_failed_phase_carries_message_as_failure_reason():
    p = es.local_phase("Failed", "FinetuneFailed", "LlamaFinetune tiny failed: OOM", {}, now=NOW)
    assert p["failureReason"] == "LlamaFinetune tiny failed: OOM"
    with pytest.raises(AssertionError):
        es.local_phase("Exploded", "x", "y", {})


def test_transition_event():
    assert es.transition_event("Creating", {"phase": "Creating"}) is None
    kind, reason, msg = es.transition_event("Updating", es.observe(
        describe("InService", config="cfg-old", reason="ping failed"), {}, desired_config="cfg-new", now=NOW))
    assert (kind, reason) == ("Warning", "Degraded") and msg == "ping failed"
    kind, reason, _ = es.transition_event("Creating", es.observe(describe("InService"), {}, now=NOW))
    assert (kind, reason) == ("Normal", "InService")


def test_gone_resets_to_pending():
    p = es.gone({"endpointName": "lep-demo-abc", "phase": "InService"}, now=NOW)
    assert p["phase"] == "Pending" and p["endpointArn"] is None
    assert "no longer exists" in cond(p, "Progressing")["message"]


def test_to_epoch_forms():
    t = dt.datetime(2026, 11, 24, 10, 0, 0, tzinfo=dt.timezone.utc)
    assert values.to_epoch(t) == values.to_epoch(int(t.timestamp() * 1000)) == values.to_epoch(t.timestamp()) \
        == values.to_epoch("2026-11-24T10:00:00Z")
    assert values.to_epoch(None) is None


# ---- the role allowlist's refusal of a spec ------------------------------------------------------

DENIED = ("spec.roleArn arn:aws:iam::1:role/b is not allowed in namespace 'team'; use one of: "
          "arn:aws:iam::1:role/a, or ask the platform team to add this role for the namespace to the "
          "operator's role allowlist")


def serving(config="cfg-old", t=1000.0):
    """Status of an endpoint in service on `config` (from an InService observation)."""
    return apply({"specHash": "h-old"}, es.observe(describe("InService", config=config, t=t), {},
                                                    desired_config=config, desired_model="m-old",
                                                    generation=1, now=NOW))


def test_refused_with_nothing_serving_is_failed_as_before():
    p = es.refused({}, DENIED, serving_config=None, generation=1, now=NOW)
    assert p["phase"] == "Failed" and p["failureReason"] == DENIED
    failed, synced = cond(p, "Failed"), cond(p, "Synced")
    assert (failed["status"], failed["reason"], failed["message"]) == ("True", "RoleNotAllowed", DENIED)
    assert (synced["status"], synced["reason"]) == ("True", "RoleNotAllowed")
    assert cond(p, "Ready")["status"] == "False"
    assert es.refusal(apply({}, p)) == DENIED


def test_refused_while_an_older_spec_serves_is_degraded_and_keeps_what_serves():
    status = serving()
    assert es.serving_now(status) == "cfg-old"
    p = es.refused(status, DENIED, serving_config=es.serving_now(status), generation=2, now=NOW)
    assert p["phase"] == "Degraded"
    assert set(p) == {"phase", "failureReason", "conditions"}  # names, hash, ARN: untouched
    degraded = cond(p, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RoleNotAllowed")
    assert degraded["message"].startswith(DENIED) and "cfg-old keeps serving" in degraded["message"]
    assert "spec.roleArn is fixed" in degraded["message"] and p["failureReason"] == degraded["message"]
    assert cond(p, "Ready")["status"] == "True"  # the old configuration answers
    assert cond(p, "Failed")["status"] == "False" and cond(p, "Progressing")["status"] == "False"
    synced = cond(p, "Synced")
    assert (synced["status"], synced["reason"], synced["message"]) == ("False", "RoleNotAllowed", DENIED)
    assert es.transition_event("InService", p) == ("Warning", "Degraded", p["failureReason"])


@pytest.mark.parametrize("phase", ["Pending", "Creating", "Failed", "WaitingForModel", "Deleting"])
def test_nothing_serves_in_other_phases(phase):
    assert es.serving_now({**serving(), "phase": phase}) is None


def test_nothing_serves_without_a_recorded_endpoint():
    assert es.serving_now({"phase": "InService"}) is None


def test_observations_of_the_old_config_keep_a_refused_spec_degraded():
    status = serving(t=1000)
    status = apply(status, es.refused(status, DENIED, serving_config="cfg-old", generation=2, now=NOW))
    # the same state again (a redelivered event, the resync's Describe): nothing to write
    for seen in (describe("InService", config="cfg-old", t=1000), event_detail("InService", "cfg-old", t=1000),
                 describe("InService", config="cfg-old", t=1500)):
        assert es.observe(seen, status, desired_config="cfg-old", desired_model="m-old", generation=2,
                          now="2026-11-24T11:00:00.000Z") == {}
    # SageMaker patching the old fleet (SystemUpdating, which is InService otherwise) changes nothing
    assert es.observe(describe("SystemUpdating", config="cfg-old", t=1600), status, desired_config="cfg-old",
                      generation=2, now=NOW) == {}
    assert es.observe(describe("Updating", config="cfg-old", t=1700), status, desired_config="cfg-old",
                      generation=2, now=NOW) == {}


def test_refused_during_an_update_then_the_update_lands_stays_degraded_on_the_new_serving_config():
    # spec 2 (allowed) is rolling out over cfg-old when spec 3 is refused
    status = {**serving(), "phase": "Updating", "specHash": "h-mid"}
    status = apply(status, es.refused(status, DENIED, serving_config=es.serving_now(status), generation=3,
                                      now=NOW))
    assert status["phase"] == "Degraded"
    p = es.observe(describe("InService", config="cfg-mid", t=1200), status, desired_config="cfg-mid",
                   desired_model="m-mid", generation=3, now=NOW)
    assert p["phase"] == "Degraded" and p["endpointConfigName"] == "cfg-mid" and p["modelName"] == "m-mid"
    assert "cfg-mid keeps serving" in p["failureReason"]
    assert cond(p, "Synced")["reason"] == "RoleNotAllowed"


def test_refused_while_creating_becomes_degraded_once_the_old_spec_serves():
    status = apply({}, es.observe(describe("Creating", config="cfg-old", t=100), {}, desired_config="cfg-old",
                                  now=NOW))
    assert es.serving_now(status) is None
    status = apply(status, es.refused(status, DENIED, serving_config=None, generation=2, now=NOW))
    assert status["phase"] == "Failed" and cond(status, "Synced")["status"] == "True"
    status = apply(status, es.observe(describe("InService", config="cfg-old", t=200), status,
                                      desired_config="cfg-old", generation=2, now=NOW))
    assert status["phase"] == "Degraded" and cond(status, "Degraded")["reason"] == "RoleNotAllowed"
    assert cond(status, "Failed")["status"] == "False" and cond(status, "Ready")["status"] == "True"
    assert cond(status, "Synced")["status"] == "False" and es.refusal(status) == DENIED


def test_a_refused_spec_on_a_failed_or_deleted_endpoint():
    status = serving(t=1000)
    status = apply(status, es.refused(status, DENIED, serving_config="cfg-old", generation=2, now=NOW))
    p = es.observe(describe("Failed", config="cfg-old", t=1100, reason="instance lost"), status,
                   desired_config="cfg-old", now=NOW)
    assert p["phase"] == "Failed" and cond(p, "Failed")["reason"] == "RoleNotAllowed"
    assert p["failureReason"].startswith(DENIED) and "is Failed: instance lost" in p["failureReason"]
    # deleting is deleting, refused or not
    assert es.observe(describe("Deleting", config="cfg-old", t=1100), status, now=NOW)["phase"] == "Deleting"


def test_lift_refusal():
    assert es.lift_refusal(serving(), now=NOW) == {}
    degraded = serving()
    degraded = apply(degraded, es.refused(degraded, DENIED, serving_config="cfg-old", generation=2, now=NOW))
    lift = es.lift_refusal(degraded, generation=3, now=NOW)
    assert lift["phase"] == "Updating" and lift["failureReason"] is None
    assert cond(lift, "Degraded")["status"] == "False" and cond(lift, "Ready")["status"] == "True"
    assert (cond(lift, "Synced")["status"], cond(lift, "Synced")["reason"]) == ("False", "SpecChanged")
    lifted = apply(degraded, lift)
    assert es.refusal(lifted) is None and "failureReason" not in lifted
    # observations go by SageMaker again: the update to the new spec, then it serving
    p = es.observe(describe("Updating", config="cfg-old", t=1100), lifted, desired_config="cfg-new", now=NOW)
    assert p["phase"] == "Updating"
    lifted = apply(lifted, p)
    p = es.observe(describe("InService", config="cfg-new", t=1200), lifted, desired_config="cfg-new",
                   desired_model="m-new", now=NOW)
    assert p["phase"] == "InService" and p["modelName"] == "m-new"

    failed = apply({}, es.refused({}, DENIED, serving_config=None, generation=1, now=NOW))
    lift = es.lift_refusal(failed, generation=2, now=NOW)
    assert lift["phase"] == "Pending" and cond(lift, "Failed")["status"] == "False"
    assert es.refusal(apply(failed, lift)) is None


def test_clearing_refusal_lifts_it_before_the_handlers_change():
    status = serving()
    status = apply(status, es.refused(status, DENIED, serving_config="cfg-old", generation=2, now=NOW))
    seen = []

    def change(current, meta):
        seen.append(current)
        return {"specHash": "h-new"}

    update = endpoint_changes.clearing_refusal(change)(dict(status), {"generation": 3})
    assert es.refusal(seen[0]) is None and "failureReason" not in seen[0] and seen[0]["phase"] == "Updating"
    assert update["failureReason"] is None and update["phase"] == "Updating" and update["specHash"] == "h-new"
    assert endpoint_changes.without_refusal(status, 3)["phase"] == "Updating"
    # no refusal: the change alone
    assert endpoint_changes.clearing_refusal(change)(serving(), {"generation": 1}) == {"specHash": "h-new"}


INVALID = "spec.instanceCount: must be at least 1; set it to 1 or more"


def test_an_invalid_spec_while_an_older_spec_serves_is_degraded_until_the_spec_is_fixed():
    status = serving(t=1000)
    p = es.refused(status, INVALID, serving_config=es.serving_now(status), reason=es.INVALID_SPEC, generation=2,
                   now=NOW)
    assert p["phase"] == "Degraded" and cond(p, "Ready")["status"] == "True"
    degraded, synced = cond(p, "Degraded"), cond(p, "Synced")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert degraded["message"].startswith(INVALID) and "until the spec is fixed" in degraded["message"]
    assert (synced["status"], synced["reason"], synced["message"]) == ("False", "InvalidSpec", INVALID)
    status = apply(status, p)
    assert es.refusal(status) == INVALID and es.refusal_reason(status) == "InvalidSpec"
    # the old configuration seen in service again (event, resync) does not flip it to InService
    assert es.observe(describe("InService", config="cfg-old", t=1500), status, desired_config="cfg-old",
                      desired_model="m-old", generation=2, now=NOW) == {}
    # a fixed spec lifts it: the update to come
    lift = es.lift_refusal(status, generation=3, now=NOW)
    assert lift["phase"] == "Updating" and lift["failureReason"] is None
    assert es.refusal(apply(status, lift)) is None


def test_an_invalid_spec_with_nothing_serving_is_failed_and_says_the_spec_was_refused():
    p = es.refused({}, INVALID, serving_config=None, reason=es.INVALID_SPEC, generation=1, now=NOW)
    assert p["phase"] == "Failed" and p["failureReason"] == INVALID
    assert (cond(p, "Failed")["reason"], cond(p, "Synced")["status"], cond(p, "Synced")["reason"]) == \
        ("InvalidSpec", "True", "InvalidSpec")
