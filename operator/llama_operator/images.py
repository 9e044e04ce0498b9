"""Container image URIs, resolved offline from the image tables bundled with `sagemaker-core`
(`sagemaker.core.image_uris`), so the operator needs no network call and no hand-kept table.

Defaults are pinned so a given operator version always picks the same images; a spec's `image`
overrides them."""

from __future__ import annotations

import functools

# PyTorch DLC for DeepSpeed jobs; the SMP v2 image (its own PyTorch build) for method smp.
PYTORCH_TRAINING_VERSION = "2.8.0"
SMP_TRAINING_VERSION = "2.8.0"
LMI_VERSION = "0.33.0"
# The image tables are keyed by an instance family; any GPU type picks the GPU image.
_GPU_INSTANCE = "ml.p4d.24xlarge"


@functools.lru_cache(maxsize=None)
def _image_uris():
    try:
        from sagemaker.core import image_uris
    except ImportError as exc:  # pragma: no cover - an install without sagemaker-core
        raise RuntimeError("resolving default images needs the sagemaker-core package "
                           "(pip install sagemaker-core), or set spec.image") from exc
    return image_uris


def _newest_py_version(framework: str, version: str, scope: str) -> str:
    config = _image_uris().config_for_framework(framework)
    versions = config[scope]["versions"] if scope in config else config["versions"]
    return sorted(versions[version]["py_versions"], key=lambda v: int(v[2:]))[-1]


def _retrieve(**kwargs) -> str:
    try:
        return _image_uris().retrieve(**kwargs)
    except ValueError as exc:
        raise ValueError(f"no {kwargs['framework']} image for region {kwargs['region']!r}: {exc}; "
                         "set spec.image to an image in your region") from exc


def training_image_uri(region: str, method: str, *, version: str | None = None,
                       instance_type: str = _GPU_INSTANCE) -> str:
    """The training image for a fine-tuning method ("deepspeed" or "smp") in a region."""
    if method == "deepspeed":
        framework, version = "pytorch", version or PYTORCH_TRAINING_VERSION
        extra = {}
    elif method == "smp":
        framework, version = "pytorch-smp", version or SMP_TRAINING_VERSION
        extra = {"distribution": {"torch_distributed": {"enabled": True},
                                  "smdistributed": {"modelparallel": {"enabled": True}}}}
    else:
        raise ValueError(f"unknown method {method!r}: expected deepspeed or smp")
    return _retrieve(framework=framework, region=region, version=version,
                     py_version=_newest_py_version(framework, version, "training"),
                     instance_type=instance_type, image_scope="training", **extra)


def lmi_image_uri(region: str, *, version: str | None = None) -> str:
    """The LMI (djl-inference) serving image in a region."""
    return _retrieve(framework="djl-lmi", region=region, version=version or LMI_VERSION)
