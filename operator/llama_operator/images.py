"""Container image URIs, resolved offline from a table bundled with the operator (images.json),
so the operator needs no network call and no heavy SDK at run time.

The table holds, per region, the URI of each default image: the PyTorch training DLC (DeepSpeed
jobs), the SMP v2 training image (method smp) and the LMI (djl-inference) serving image, at the
versions pinned below, so a given operator version always picks the same images; a spec's
`image` overrides them. It is generated from the image tables of `sagemaker-core`
(`sagemaker.core.image_uris`, a test dependency): after changing a pinned version run
`python -m llama_operator.images --write`; tests/unit/test_images.py checks the table against
sagemaker-core."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

PYTORCH_TRAINING_VERSION = "2.8.0"
SMP_TRAINING_VERSION = "2.8.0"
LMI_VERSION = "0.33.0"
TABLE = Path(__file__).with_name("images.json")
KINDS = {"deepspeed": "PyTorch training", "smp": "SMP v2 training", "lmi": "LMI serving"}
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

def resolve_with_sagemaker_core() -> dict[str, dict[str, str]]:
    """Every region's default images, as sagemaker-core's image tables give them."""
    from sagemaker.core import image_uris

    def newest_py(framework: str, version: str) -> str:
        config = image_uris.config_for_framework(framework)["training"]["versions"][version]
        return sorted(config["py_versions"], key=lambda v: int(v[2:]))[-1]

    requests = {
        "deepspeed": dict(framework="pytorch", version=PYTORCH_TRAINING_VERSION, image_scope="training",
                          instance_type=_GPU_INSTANCE, py_version=newest_py("pytorch", PYTORCH_TRAINING_VERSION)),
        "smp": dict(framework="pytorch-smp", version=SMP_TRAINING_VERSION, image_scope="training",
                    instance_type=_GPU_INSTANCE, py_version=newest_py("pytorch-smp", SMP_TRAINING_VERSION),
                    distribution={"torch_distributed": {"enabled": True},
                                  "smdistributed": {"modelparallel": {"enabled": True}}}),
        "lmi": dict(framework="djl-lmi", version=LMI_VERSION),
    }
    regions: set[str] = set()
    for kwargs in requests.values():
        config = image_uris.config_for_framework(kwargs["framework"])
        scope = kwargs.get("image_scope")
        versions = config[scope]["versions"] if scope else config["versions"]
        regions |= set(versions[kwargs["version"]]["registries"])
    table: dict[str, dict[str, str]] = {kind: {} for kind in requests}
    for region in sorted(regions):
        for kind, kwargs in requests.items():
            try:
                table[kind][region] = image_uris.retrieve(region=region, **kwargs)
            except ValueError:
                pass  # this image is not published in this region
    return table


def main(argv: list[str]) -> int:
    if argv != ["--write"]:
        print("usage: python -m llama_operator.images --write   (needs sagemaker-core)", file=sys.stderr)
        return 2
    versions = {"pytorch_training": PYTORCH_TRAINING_VERSION, "smp_training": SMP_TRAINING_VERSION, "lmi": LMI_VERSION}
    TABLE.write_text(json.dumps({"versions": versions, "images": resolve_with_sagemaker_core()}, indent=1,
                                sort_keys=True) + "\n")
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
