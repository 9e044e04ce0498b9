"""Conditions as both kinds write them: Kubernetes-style, one story per phase."""

from llama_operator.status.conditions import for_phase, set_condition, synced

T0, T1 = "2026-01-01T00:00:00.000Z", "2026-01-01T00:01:00.000Z"


def by_type(conds):
    return {c["type"]: c for c in conds}


def test_the_transition_time_moves_only_when_the_status_flips():
    conds = set_condition(None, "Ready", False, "Creating", "creating", generation=1, now=T0)
    again = set_condition(conds, "Ready", False, "StillCreating", "still", generation=2, now=T1)
    assert by_type(again)["Ready"]["lastTransitionTime"] == T0
    assert by_type(again)["Ready"]["reason"] == "StillCreating" and by_type(again)["Ready"]["observedGeneration"] == 2
    flipped = set_condition(again, "Ready", True, "Done", "done", generation=2, now=T1)
    assert by_type(flipped)["Ready"] == {"type": "Ready", "status": "True", "reason": "Done", "message": "done",
                                         "lastTransitionTime": T1, "observedGeneration": 2}


def test_a_phase_sets_every_condition_and_says_why_the_false_ones_are_false():
    conds = for_phase({"Ready": True, "Failed": False}, "Up", "serving", None, what="endpoint", phase="InService",
                      generation=None, now=T0)
    assert by_type(conds)["Ready"]["message"] == "serving"
    assert by_type(conds)["Failed"]["message"] == "Failed is False while the endpoint is InService"
    assert "observedGeneration" not in by_type(conds)["Ready"]


def test_an_optional_condition_stays_absent_until_it_is_true_once():
    story = {"Ready": True, "Degraded": False}
    conds = for_phase(story, "Up", "ok", None, what="endpoint", phase="InService", generation=1, now=T0,
                      optional=("Degraded",))
    assert set(by_type(conds)) == {"Ready"}
    degraded = for_phase({"Ready": True, "Degraded": True}, "RolledBack", "old fleet serves", conds,
                         what="endpoint", phase="Degraded", generation=1, now=T1, optional=("Degraded",))
    back = for_phase(story, "Up", "ok", degraded, what="endpoint", phase="InService", generation=1, now=T1,
                     optional=("Degraded",))
    assert by_type(back)["Degraded"]["status"] == "False"  # once there, it is kept and told False


def test_synced_keeps_messages_short_enough_for_status():
    conds = synced(None, False, "Throttled", "x" * 5000, generation=1, now=T0)
    assert len(by_type(conds)["Synced"]["message"]) == 1000
