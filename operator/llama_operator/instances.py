"""What a SageMaker hosting instance type holds: accelerators (GPUs) and memory. Inference
components ask for a share of an instance, so the operator derives each model copy's compute
requirements from this table; an instance type missing from it cannot host components until
it is added here."""

from __future__ import annotations

from typing import NamedTuple


class Instance(NamedTuple):
    gpus: int
    memory_gib: int


def _family(prefix: str, sizes: dict[str, tuple[int, int]]) -> dict[str, Instance]:
    return {f"ml.{prefix}.{size}": Instance(*spec) for size, spec in sizes.items()}


HOSTING_INSTANCES: dict[str, Instance] = {
    **_family("m5", {"large": (0, 8), "xlarge": (0, 16), "2xlarge": (0, 32), "4xlarge": (0, 64),
                     "12xlarge": (0, 192), "24xlarge": (0, 384)}),
    **_family("c5", {"large": (0, 4), "xlarge": (0, 8), "2xlarge": (0, 16), "4xlarge": (0, 32),
                     "9xlarge": (0, 72), "18xlarge": (0, 144)}),
    **_family("g5", {"xlarge": (1, 16), "2xlarge": (1, 32), "4xlarge": (1, 64), "8xlarge": (1, 128),
                     "16xlarge": (1, 256), "12xlarge": (4, 192), "24xlarge": (4, 384), "48xlarge": (8, 768)}),
    **_family("g6", {"xlarge": (1, 16), "2xlarge": (1, 32), "4xlarge": (1, 64), "8xlarge": (1, 128),
                     "16xlarge": (1, 256), "12xlarge": (4, 192), "24xlarge": (4, 384), "48xlarge": (8, 768)}),
    **_family("g6e", {"xlarge": (1, 32), "2xlarge": (1, 64), "4xlarge": (1, 128), "8xlarge": (1, 256),
                      "16xlarge": (1, 512), "12xlarge": (4, 384), "24xlarge": (4, 768), "48xlarge": (8, 1536)}),
    "ml.p4d.24xlarge": Instance(8, 1152),
    "ml.p4de.24xlarge": Instance(8, 1152),
    "ml.p5.48xlarge": Instance(8, 2048),
    "ml.p5e.48xlarge": Instance(8, 2048),
    "ml.p5en.48xlarge": Instance(8, 2048),
}

# SageMaker keeps part of each instance's memory for itself and the container runtime; a copy
# asking for all of it would never be placed.
USABLE_MEMORY_FRACTION = 0.9


def hosting_instance(instance_type: str) -> Instance | None:
    return HOSTING_INSTANCES.get(instance_type)


class CopyShape(NamedTuple):
    """One model copy of an inference component: what it asks of an instance, and how many fit."""
    per_instance: int
    gpus: int            # NumberOfAcceleratorDevicesRequired (0: a CPU instance)
    memory_mb: int       # MinMemoryRequiredInMb


def copy_shape(instance_type: str, gpus_per_copy: int | None) -> CopyShape | str:
    """The copy shape on `instance_type` for a model that runs on `gpus_per_copy` GPUs (None:
    all of the instance's), or why there is none. Memory is shared out evenly between copies."""
    inst = hosting_instance(instance_type)
    if inst is None:
        known = sorted({t.split(".")[1] for t in HOSTING_INSTANCES})
        return (f"deployment.mode inferenceComponents: resources.instanceType {instance_type} is not one whose GPUs "
                f"and memory the operator knows, so it cannot size the model copies; use one of the families "
                f"{', '.join(known)}")
    if inst.gpus == 0:
        per_instance, gpus = 1, 0
    else:
        gpus = inst.gpus if gpus_per_copy is None else gpus_per_copy
        if gpus > inst.gpus or inst.gpus % gpus:
            return (f"serving.tensorParallelDegree {gpus}: each model copy on {instance_type} must use a divisor of "
                    f"its {inst.gpus} GPU(s)")
        per_instance = inst.gpus // gpus
    memory = int(inst.memory_gib * 1024 * USABLE_MEMORY_FRACTION) // per_instance
    return CopyShape(per_instance, gpus, memory)
