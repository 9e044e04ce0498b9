"""Kubernetes-style conditions for both kinds: one set at a time (lastTransitionTime moves only
when a condition's status flips), and the full set that tells one phase's story."""

from __future__ import annotations

from typing import Any, Collection, Mapping


def set_condition(conditions: list[Mapping[str, Any]] | None, type_: str, status: bool, reason: str,
                  message: str, *, generation: int | None, now: str) -> list[dict]:
    """Conditions with one of them set."""
    out: list[dict] = []
    found = False
    value = "True" if status else "False"
    for c in conditions or []:
        c = dict(c)
        if c.get("type") == type_:
            found = True
            if c.get("status") != value:
                c["lastTransitionTime"] = now
            c.update(status=value, reason=reason, message=message)
            if generation is not None:
                c["observedGeneration"] = generation
        out.append(c)
    if not found:
        c = {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": now}
        if generation is not None:
            c["observedGeneration"] = generation
        out.append(c)
    return out


def synced(previous, ok: bool, reason: str, message: str, *, generation: int | None, now: str) -> list[dict]:
    """The Synced condition: does status reflect SageMaker, or is a call being retried (or was
    the spec refused before anything was sent)."""
    return set_condition(previous, "Synced", ok, reason, message[:1000], generation=generation, now=now)


def for_phase(truth: Mapping[str, bool], reason: str, message: str, previous, *, what: str, phase: str,
              generation: int | None, now: str, optional: Collection[str] = ()) -> list[dict]:
    """`previous` with each condition of `truth` set: the true ones to (reason, message), the
    false ones to "<type> is False while the <what> is <phase>". An `optional` condition that
    is false and absent stays absent (absent says as much as False; the list stays short)."""
    conds = list(previous or [])
    for type_, value in truth.items():
        if not value and type_ in optional and not any(c.get("type") == type_ for c in conds):
            continue
        conds = set_condition(conds, type_, value, reason,
                              message if value else f"{type_} is False while the {what} is {phase}",
                              generation=generation, now=now)
    return conds
