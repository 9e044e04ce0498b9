"""The planner as the handlers see it (`llama_operator.spec`, `llama_operator.plan`), plus the
small helpers the handlers need around it."""

from __future__ import annotations

from llama_operator.plan.finetune import create_training_job_request  # noqa: F401
from llama_operator.plan.names import training_job_name  # noqa: F401
from llama_operator.spec import LlamaFinetuneSpec


def validate_spec(spec: dict):
    return LlamaFinetuneSpec.model_validate(spec)


def describe_invalid(exc: Exception) -> str:
    """One line per problem, each naming the field as written in the manifest."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for err in errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"spec.{field}: {err.get('msg', 'invalid')}" if field else err.get("msg", "invalid"))
    return "; ".join(parts) + " (fix the manifest and apply it again)"


def deletion_policy(spec: dict) -> str:
    return str(spec.get("deletionPolicy") or "Delete")


def output_path(request: dict) -> str:
    return request["OutputDataConfig"]["S3OutputPath"]
