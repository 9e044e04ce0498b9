"""Deterministic SageMaker names: a readable `<namespace>-<name>` prefix plus a short hash.

The hash covers namespace, name and uid, so a resource deleted and re-created under the same name
gets new SageMaker objects (SageMaker keeps training job names forever), and two namespaces never
collide even when their readable prefixes truncate to the same text."""

from __future__ import annotations

import hashlib
import re

MAX_LEN = 63
# SageMaker's pattern for job, model, endpoint and endpoint config names.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def _digest(*parts: str, length: int) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def _readable(text: str, room: int) -> str:
    cleaned = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")[:room].rstrip("-")
    return cleaned or "x"


def _name(namespace: str, name: str, suffix: str) -> str:
    room = MAX_LEN - len(suffix) - 1
    return f"{_readable(f'{namespace}-{name}', room)}-{suffix}"


def training_job_name(namespace: str, name: str, uid: str) -> str:
    return _name(namespace, name, _digest("finetune", namespace, name, uid, length=8))


def endpoint_name(namespace: str, name: str, uid: str) -> str:
    return _name(namespace, name, _digest("endpoint", namespace, name, uid, length=8))


def model_name(namespace: str, name: str, uid: str, spec_hash: str) -> str:
    return _name(namespace, name, "m" + _digest("model", namespace, name, uid, spec_hash, length=12))


def endpoint_config_name(namespace: str, name: str, uid: str, spec_hash: str) -> str:
    return _name(namespace, name, "c" + _digest("config", namespace, name, uid, spec_hash, length=12))


def inference_component_name(namespace: str, name: str, uid: str) -> str:
    """The endpoint's model as an inference component: one per resource, kept across model changes
    (UpdateInferenceComponent rolls it to each new model)."""
    return _name(namespace, name, "ic" + _digest("component", namespace, name, uid, length=8))


def adapter_component_name(namespace: str, name: str, uid: str, adapter: str) -> str:
    """A LoRA adapter of model.adapters as an adapter inference component on the resource's
    component: requests name it (InferenceComponentName) to run with the adapter. The adapter's
    name stays readable however long the resource's is."""
    suffix = "a" + _digest("adapter", namespace, name, uid, adapter, length=8)
    tail = _readable(adapter, 24)
    owner = _readable(f"{namespace}-{name}", MAX_LEN - len(suffix) - len(tail) - 2)
    return f"{owner}-{tail}-{suffix}"
