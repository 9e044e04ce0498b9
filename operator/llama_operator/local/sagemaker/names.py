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
    "inference-component": ("inference-component", "inferenceComponentName"),
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


# ---- what one instance of a type offers (inference components' placement) ------------------------
# (vCPUs, memory GiB, accelerators: GPUs, Inferentia/Trainium chips or Gaudi cards) of the GPU and
# Neuron types, from the EC2 instance type pages; CPU families follow their size rule below.
_ACCELERATED = {
    "g4dn": {"xlarge": (4, 16, 1), "2xlarge": (8, 32, 1), "4xlarge": (16, 64, 1), "8xlarge": (32, 128, 1),
             "12xlarge": (48, 192, 4), "16xlarge": (64, 256, 1)},
    "g5": {"xlarge": (4, 16, 1), "2xlarge": (8, 32, 1), "4xlarge": (16, 64, 1), "8xlarge": (32, 128, 1),
           "12xlarge": (48, 192, 4), "16xlarge": (64, 256, 1), "24xlarge": (96, 384, 4), "48xlarge": (192, 768, 8)},
    "g6": {"xlarge": (4, 16, 1), "2xlarge": (8, 32, 1), "4xlarge": (16, 64, 1), "8xlarge": (32, 128, 1),
           "12xlarge": (48, 192, 4), "16xlarge": (64, 256, 1), "24xlarge": (96, 384, 4), "48xlarge": (192, 768, 8)},
    "g6e": {"xlarge": (4, 32, 1), "2xlarge": (8, 64, 1), "4xlarge": (16, 128, 1), "8xlarge": (32, 256, 1),
            "12xlarge": (48, 384, 4), "16xlarge": (64, 512, 1), "24xlarge": (96, 768, 4),
            "48xlarge": (192, 1536, 8)},
    "p3": {"2xlarge": (8, 61, 1), "8xlarge": (32, 244, 4), "16xlarge": (64, 488, 8)},
    "p4d": {"24xlarge": (96, 1152, 8)}, "p4de": {"24xlarge": (96, 1152, 8)},
    "p5": {"4xlarge": (16, 256, 1), "48xlarge": (192, 2048, 8)}, "p5e": {"48xlarge": (192, 2048, 8)},
    "p5en": {"48xlarge": (192, 2048, 8)},
    "inf1": {"xlarge": (4, 8, 1), "2xlarge": (8, 16, 1), "6xlarge": (24, 48, 4), "24xlarge": (96, 192, 16)},
    "inf2": {"xlarge": (4, 16, 1), "8xlarge": (32, 128, 1), "24xlarge": (96, 384, 6), "48xlarge": (192, 768, 12)},
    "trn1": {"2xlarge": (8, 32, 1), "32xlarge": (128, 512, 16)}, "trn1n": {"32xlarge": (128, 512, 16)},
    "dl1": {"24xlarge": (96, 768, 8)},
}
_T2 = {"medium": (2, 4), "large": (2, 8), "xlarge": (4, 16), "2xlarge": (8, 32)}
_GIB_PER_VCPU = {"m": 4, "c": 2, "r": 8}  # general purpose, compute and memory optimised families


def instance_resources(instance_type: str) -> tuple[float, int, int] | None:
    """(vCPUs, memory MiB, accelerator devices) of one instance of an ml.* type, or None for a type
    the table does not know (its copies are then placed without a resource limit)."""
    m = re.match(r"^ml\.([a-z0-9-]+)\.(medium|large|(\d*)xlarge)$", instance_type or "")
    if not m:
        return None
    family, size = m.group(1), m.group(2)
    if family in _ACCELERATED:
        spec = _ACCELERATED[family].get(size)
        return (float(spec[0]), spec[1] * 1024, spec[2]) if spec else None
    if family == "t2":
        spec = _T2.get(size)
        return (float(spec[0]), spec[1] * 1024, 0) if spec else None
    vcpus = {"medium": 1, "large": 2, "xlarge": 4}.get(size) or int(m.group(3)) * 4
    per = _GIB_PER_VCPU.get(family[0])
    return (float(vcpus), vcpus * per * 1024, 0) if per else None
