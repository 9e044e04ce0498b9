"""Pure rules about names and ARNs, as SageMaker applies them."""

from __future__ import annotations

import functools
import re

from llama_operator.local.sagemaker.errors import ValidationError

ACCOUNT = "123456789012"
NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
_NAME_RE = re.compile(NAME_PATTERN + r"$")

# kind -> (ARN resource type, request field as AWS words it in validation messages)
KINDS = {
    "training-job": ("training-job", "trainingJobName"),
    "model": ("model", "modelName"),
    "endpoint-config": ("endpoint-config", "endpointConfigName"),
    "endpoint": ("endpoint", "endpointName"),
}


def arn(kind: str, name: str, region: str) -> str:
    # SageMaker lower-cases the name inside an ARN.
    return f"arn:aws:sagemaker:{region}:{ACCOUNT}:{KINDS[kind][0]}/{name.lower()}"


def parse_arn(value: str) -> tuple[str, str] | None:
    """(kind, lower-cased name) of a SageMaker ARN, or None when it is not one."""
    m = re.match(r"^arn:aws[a-z-]*:sagemaker:[^:]*:\d{12}:([a-z-]+)/(.+)$", value or "")
    if not m or m.group(1) not in KINDS:
        return None
    return m.group(1), m.group(2)


def validate_name(kind: str, name) -> str:
    field = KINDS[kind][1]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValidationError(
            f"1 validation error detected: Value '{name}' at '{field}' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {NAME_PATTERN}"
        )
    return name


def log_stream_arn(region: str, endpoint: str) -> str:
    return f"arn:aws:logs:{region}:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{endpoint}"


@functools.lru_cache(maxsize=None)
def instance_types(shape: str) -> frozenset[str]:
    """Instance types SageMaker accepts, from botocore's service model (kept current with the SDK,
    unlike a hand-kept list)."""
    import botocore.session

    return frozenset(botocore.session.get_session().get_service_model("sagemaker").shape_for(shape).enum)


def validate_instance_type(value, shape: str, field: str) -> None:
    allowed = instance_types(shape)
    if value not in allowed:
        raise ValidationError(
            f"1 validation error detected: Value '{value}' at '{field}' failed to satisfy constraint: "
            f"Member must satisfy enum value set: [{', '.join(sorted(allowed)[:8])}, ...] "
            "(e.g. ml.m5.xlarge, ml.g5.2xlarge)")
