"""Container image URIs, resolved offline from a table bundled with the operator (images.json),
so the operator needs no network call and no heavy SDK at run time.

The table holds, per region, the URI of each default image: the PyTorch training DLC (DeepSpeed
jobs), the SMP v2 training image (method smp) and the LMI (djl-inference) serving image, at the
versions pinned below, so a given operator version always picks the same images; a spec's
`image` overrides them. What each image carries (torch, transformers, ...) is recorded, with
sources, in image_profiles.json next to this file (see docs/images.md).

The table is generated from `sagemaker-core` (`sagemaker.core.image_uris`, a test dependency)
through the same functions the SageMaker SDK uses: the training images through
`get_training_image_uri()` (the PyTorch estimator's path), the SMP one with the SMP v2
distribution, which is how the SDK reaches the SMP images; the LMI image through `retrieve()`.
After changing a pinned version run `python -m llama_operator.plan.images --write`;
tests/operator/plan/test_images.py checks the table's tags and compares it with sagemaker-core."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

PYTORCH_TRAINING_VERSION = "2.8.0"
# SMP images are tagged by the PyTorch version they are built on, not by the SMP library version:
# SMP library v2.8.0 ships as smdistributed-modelparallel:2.5.1-gpu-py311-cu124. sagemaker-core
# keeps that mapping as a version alias of its pytorch-smp table ("2.5.1" -> "2.8.0"), and the
# generator refuses to write a table if the two constants below disagree with it.
SMP_LIBRARY_VERSION = "2.8.0"
SMP_PYTORCH_VERSION = "2.5.1"
LMI_VERSION = "0.33.0"
TABLE = Path(__file__).with_name("images.json")
PROFILES = Path(__file__).with_name("image_profiles.json")
KINDS = {"deepspeed": "PyTorch training", "smp": "SMP v2 training", "lmi": "LMI serving"}
# The distribution the SDK's PyTorch estimator takes for SMP v2; given it, sagemaker-core's
# get_training_image_uri() switches to the pytorch-smp images and adds their CUDA tag suffix.
SMP_DISTRIBUTION = {"torch_distributed": {"enabled": True}, "smdistributed": {"modelparallel": {"enabled": True}}}
# sagemaker-core's tables are keyed by an instance family; any GPU type picks the GPU image.
_GPU_INSTANCE = "ml.p4d.24xlarge"


@functools.lru_cache(maxsize=None)
def _table() -> dict[str, dict[str, str]]:
    return json.loads(TABLE.read_text())["images"]


def _lookup(kind: str, region: str) -> str:
    uri = _table()[kind].get(region)
    if uri is None:
        raise ValueError(f"no {KINDS[kind]} image for region {region!r} in the operator's image table; "
                         "set spec.image to an image in your region")
    return uri


def training_image_uri(region: str, method: str) -> str:
    """The training image for a fine-tuning method ("deepspeed" or "smp") in a region."""
    if method not in ("deepspeed", "smp"):
        raise ValueError(f"unknown method {method!r}: expected deepspeed or smp")
    return _lookup(method, region)


def lmi_image_uri(region: str) -> str:
    """The LMI (djl-inference) serving image in a region."""
    return _lookup("lmi", region)


# ---- generating the table from sagemaker-core ---------------------------------------------------

def _newest_py(version_config: dict) -> str:
    return sorted(version_config["py_versions"], key=lambda v: int(v[2:]))[-1]


def resolve_with_sagemaker_core() -> dict[str, dict[str, str]]:
    """Every region's default images, as sagemaker-core resolves them on the SDK's own paths."""
    from sagemaker.core import image_uris

    smp_training = image_uris.config_for_framework("pytorch-smp")["training"]
    mapped = smp_training.get("version_aliases", {}).get(SMP_PYTORCH_VERSION)
    if mapped != SMP_LIBRARY_VERSION:
        raise RuntimeError(f"sagemaker-core maps the SMP image of PyTorch {SMP_PYTORCH_VERSION} to SMP library "
                           f"{mapped}, not {SMP_LIBRARY_VERSION}: fix SMP_PYTORCH_VERSION/SMP_LIBRARY_VERSION")
    pytorch = image_uris.config_for_framework("pytorch")["training"]["versions"][PYTORCH_TRAINING_VERSION]
    smp = smp_training["versions"][SMP_LIBRARY_VERSION]
    lmi = image_uris.config_for_framework("djl-lmi")["versions"][LMI_VERSION]

    def deepspeed_image(region: str) -> str:
        return image_uris.get_training_image_uri(region, "pytorch", framework_version=PYTORCH_TRAINING_VERSION,
                                                 py_version=_newest_py(pytorch), instance_type=_GPU_INSTANCE)

    def smp_image(region: str) -> str:
        # framework_version is the PyTorch version, as with the SDK's PyTorch estimator; the
        # distribution makes sagemaker-core pick the pytorch-smp table and the cu124 suffix.
        return image_uris.get_training_image_uri(region, "pytorch", framework_version=SMP_PYTORCH_VERSION,
                                                 py_version=_newest_py(smp), distribution=SMP_DISTRIBUTION,
                                                 instance_type=_GPU_INSTANCE)

    def lmi_image(region: str) -> str:
        return image_uris.retrieve("djl-lmi", region, version=LMI_VERSION)

    kinds = {"deepspeed": (pytorch, deepspeed_image), "smp": (smp, smp_image), "lmi": (lmi, lmi_image)}
    return {kind: {region: resolve(region) for region in sorted(config["registries"])}
            for kind, (config, resolve) in kinds.items()}


def pinned_versions() -> dict[str, str]:
    return {"pytorch_training": PYTORCH_TRAINING_VERSION, "smp_library": SMP_LIBRARY_VERSION,
            "smp_pytorch": SMP_PYTORCH_VERSION, "lmi": LMI_VERSION}


def main(argv: list[str]) -> int:
    if argv != ["--write"]:
        print("usage: python -m llama_operator.plan.images --write   (needs sagemaker-core)", file=sys.stderr)
        return 2
    TABLE.write_text(json.dumps({"versions": pinned_versions(), "images": resolve_with_sagemaker_core()},
                                indent=1, sort_keys=True) + "\n")
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
