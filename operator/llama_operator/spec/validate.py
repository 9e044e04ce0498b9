"""One way to check a spec, for both kinds, with one error format: every problem on one line that
names the field as written in the manifest (`spec.serving.maxBatchSize: ...`) and ends with the
fix. The CRD's schema and rules refuse most of this at admission; this is what the operator itself
checks, whatever reached it (an API server without the CRD's rules, a spec that is not an object)."""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
FIX = "(fix the manifest and apply it again)"


class InvalidSpec(ValueError):
    """A spec that cannot be planned; str() is the message for status and the Event."""


def describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"spec.{field}: {err.get('msg', 'invalid')}" if field else f"spec: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def validate(model: type[M], spec: Any) -> M:
    """The spec as `model`, or InvalidSpec naming each bad field."""
    if spec is None:
        raise InvalidSpec(f"spec: required: the resource has no spec {FIX}")
    if not isinstance(spec, Mapping):
        raise InvalidSpec(f"spec: must be an object, not {type(spec).__name__} {FIX}")
    try:
        return model.model_validate(dict(spec))
    except ValidationError as exc:
        raise InvalidSpec(f"{describe(exc)} {FIX}") from None


def deletion_policy(spec: Any) -> str:
    """The spec's deletionPolicy for the finalizer, whatever the spec holds: only a spec that
    says Retain keeps SageMaker's objects (a spec too broken to read is cleaned up)."""
    return "Retain" if isinstance(spec, Mapping) and spec.get("deletionPolicy") == "Retain" else "Delete"


def stored_spec(body: Any) -> Any:
    """The object's spec as the API server stored it (None when absent). kopf's `spec` argument is
    a mapping view even where the stored spec is a list or a string, so checks read this instead."""
    return body.get("spec") if isinstance(body, Mapping) else None
