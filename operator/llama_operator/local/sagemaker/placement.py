"""Where inference-component copies run: the instances of an endpoint's inference-component
variant, what each has left (vCPUs, memory, accelerators, from `names.instance_resources`), and
managed instance scaling, which adds an instance when a copy fits nowhere (up to MaxInstanceCount)
and removes empty ones (down to MinInstanceCount, 0 included). Pure bookkeeping: no processes, no
locks (components.py holds the service's lock around every call)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from llama_operator.local.sagemaker import names


@dataclass(frozen=True)
class Need:
    """A copy's reservation (ComputeResourceRequirements), or what an instance offers."""
    cpus: float = 0.0
    memory: int = 0          # MiB
    accelerators: float = 0.0

    @classmethod
    def of(cls, requirements: dict) -> Need:
        return cls(float(requirements.get("NumberOfCpuCoresRequired") or 0),
                   int(requirements.get("MinMemoryRequiredInMb") or 0),
                   float(requirements.get("NumberOfAcceleratorDevicesRequired") or 0))

    def __add__(self, other: Need) -> Need:
        return Need(self.cpus + other.cpus, self.memory + other.memory, self.accelerators + other.accelerators)

    def within(self, limit: Need) -> bool:
        return (self.cpus <= limit.cpus + 1e-9 and self.memory <= limit.memory
                and self.accelerators <= limit.accelerators + 1e-9)


def capacity_of(instance_type: str) -> Need | None:
    res = names.instance_resources(instance_type)
    return Need(*res) if res else None


def exceeds(need: Need, instance_type: str) -> str | None:
    """Why one copy cannot fit on one instance of the type (None when it can, or the type is
    unknown)."""
    cap = capacity_of(instance_type)
    if cap is None:
        return None
    for label, want, have in (("accelerator devices", need.accelerators, cap.accelerators),
                              ("MiB of memory", need.memory, cap.memory), ("CPU cores", need.cpus, cap.cpus)):
        if want > have + 1e-9:
            return f"{want:g} {label} (one {instance_type} instance has {have:g})"
    return None


@dataclass(eq=False)
class Instance:
    id: str
    slots: list[Slot] = field(default_factory=list)

    def used(self) -> Need:
        total = Need()
        for s in self.slots:
            total = total + s.need
        return total


@dataclass(eq=False)
class Slot:
    """One copy's place: the component and what it reserves on its instance."""
    component: str
    need: Need
    instance: Instance | None = None


@dataclass(frozen=True)
class Scaling:
    """A variant's ManagedInstanceScaling, as its endpoint configuration gives it."""
    enabled: bool = False
    min: int = 1
    max: int = 1

    @classmethod
    def of(cls, pv: dict) -> Scaling:
        m = pv.get("ManagedInstanceScaling") or {}
        if m.get("Status") != "ENABLED":
            return cls()
        initial = int(pv.get("InitialInstanceCount", 1))
        return cls(True, int(m.get("MinInstanceCount", initial)), int(m.get("MaxInstanceCount", initial)))


class Pool:
    """The instances of one inference-component variant."""

    def __init__(self, endpoint: str, variant: str, instance_type: str, count: int):
        self.endpoint, self.variant, self.instance_type = endpoint, variant, instance_type
        self.capacity = capacity_of(instance_type)
        self._serial = itertools.count(1)
        self.instances = [self._new() for _ in range(count)]

    def _new(self) -> Instance:
        return Instance(f"{self.variant}-{next(self._serial)}")

    def _fits(self, inst: Instance, need: Need) -> bool:
        return self.capacity is None or (inst.used() + need).within(self.capacity)

    def place(self, slot: Slot, scaling: Scaling, may_add: Callable[[], bool], spread: bool = False) -> bool:
        """Puts the slot on an instance with room (BINPACK: the fullest that fits; SPREAD: the one
        with the fewest copies); with managed instance scaling, on a new instance when none has room
        and the variant is below MaxInstanceCount (and `may_add()`, the account's limit). False when
        it fits nowhere: the copy stays unplaced."""
        fitting = [i for i in self.instances if self._fits(i, slot.need)]
        if fitting:
            inst = (min(fitting, key=lambda i: len(i.slots)) if spread
                    else max(fitting, key=lambda i: (i.used().memory, i.used().accelerators, len(i.slots))))
        elif scaling.enabled and len(self.instances) < scaling.max and may_add():
            inst = self._new()
            self.instances.append(inst)
        else:
            return False
        inst.slots.append(slot)
        slot.instance = inst
        return True

    def release(self, slot: Slot) -> None:
        if slot.instance is not None:
            slot.instance.slots = [s for s in slot.instance.slots if s is not slot]
            slot.instance = None

    def shrink(self, scaling: Scaling) -> int:
        """Managed instance scaling's scale-in: empty instances go, down to MinInstanceCount. The
        number removed."""
        if not scaling.enabled:
            return 0
        removed = 0
        for inst in [i for i in reversed(self.instances) if not i.slots]:
            if len(self.instances) <= scaling.min:
                break
            self.instances.remove(inst)
            removed += 1
        return removed

    def grow_to(self, scaling: Scaling, may_add: Callable[[], bool]) -> None:
        """Up to MinInstanceCount (a raised minimum)."""
        while scaling.enabled and len(self.instances) < scaling.min and may_add():
            self.instances.append(self._new())

    def count(self) -> int:
        return len(self.instances)
