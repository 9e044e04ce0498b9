"""LlamaEndpoint with deployment.mode inferenceComponents -> SageMaker requests (pure).

The endpoint config holds no model: its one variant is an instance pool with managed instance
scaling. The model is one inference component whose copies are placed on those instances;
SageMaker adds instances when copies need room and removes empty ones, down to zero. The pool's
bounds are wide (0..MAX_INSTANCES) and fixed, so changing spec.scaling never needs a new endpoint
config: the copy bounds Application Auto Scaling holds (minInstances..maxInstances instances'
worth of copies) are what bound the instances."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from llama_operator.instances import CopyShape
from llama_operator.plan.endpoint import KIND, VARIANT, deployment_config
from llama_operator.plan.tags import owner_tags

MODE = "inferenceComponents"
MAX_INSTANCES = 100     # spec.scaling.maxInstances' own maximum
ROUTING = "LEAST_OUTSTANDING_REQUESTS"


def uses_components(spec) -> bool:
    return spec.deployment.mode == MODE


def shape(spec) -> CopyShape:
    s = spec.copy_shape()
    if isinstance(s, str):  # admission refuses these; a planner call means a bug
        raise ValueError(s)
    return s


def config_hash(spec) -> str:
    """Over what shapes the endpoint config in this mode; it cannot change once the endpoint
    exists (handlers refuse a spec that changes it)."""
    doc = {"mode": MODE, "instanceType": spec.resources.instance_type, "roleArn": spec.role_arn}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def endpoint_config_request(spec, *, config_name: str, namespace: str, name: str, uid: str) -> dict:
    res = spec.resources
    return {
        "EndpointConfigName": config_name,
        # SageMaker assumes it to place the components' models (they carry no role of their own)
        "ExecutionRoleArn": spec.role_arn,
        "ProductionVariants": [{
            "VariantName": VARIANT,
            "InstanceType": res.instance_type,
            "InitialInstanceCount": res.instance_count,
            "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": MAX_INSTANCES},
            "RoutingConfig": {"RoutingStrategy": ROUTING},
        }],
        "Tags": owner_tags(KIND, namespace, name, uid, spec.tags),
    }


def specification(spec, model_name: str) -> dict:
    s, res = shape(spec), spec.resources
    compute: dict[str, Any] = {"MinMemoryRequiredInMb": s.memory_mb}
    if s.gpus:
        compute["NumberOfAcceleratorDevicesRequired"] = float(s.gpus)
    return {
        "ModelName": model_name,
        "StartupParameters": {
            "ModelDataDownloadTimeoutInSeconds": res.model_data_download_timeout_seconds,
            "ContainerStartupHealthCheckTimeoutInSeconds": res.container_startup_health_check_timeout_seconds,
        },
        "ComputeResourceRequirements": compute,
    }


def initial_copies(spec) -> int:
    """resources.instanceCount instances' worth of copies (at least one: SageMaker starts every
    component with a copy)."""
    return max(1, spec.resources.instance_count * shape(spec).per_instance)


def copy_bounds(spec) -> tuple[int, int]:
    sc, per = spec.scaling, shape(spec).per_instance
    return sc.min_instances * per, sc.max_instances * per


def create_request(spec, *, component: str, endpoint: str, model_name: str, namespace: str, name: str,
                   uid: str) -> dict:
    return {
        "InferenceComponentName": component,
        "EndpointName": endpoint,
        "VariantName": VARIANT,
        "Specification": specification(spec, model_name),
        "RuntimeConfig": {"CopyCount": initial_copies(spec)},
        "Tags": owner_tags(KIND, namespace, name, uid, spec.tags),
    }


def update_request(spec, *, component: str, model_name: str) -> dict:
    """A new model, rolled one copy at a time; rollbackAlarms roll it back."""
    d = spec.deployment
    config: dict[str, Any] = {"RollingUpdatePolicy": {
        "MaximumBatchSize": {"Type": "COPY_COUNT", "Value": 1},
        "WaitIntervalInSeconds": d.wait_interval_seconds,
    }}
    rollback = deployment_config(spec).get("AutoRollbackConfiguration")
    if rollback:
        config["AutoRollbackConfiguration"] = rollback
    return {"InferenceComponentName": component, "Specification": specification(spec, model_name),
            "DeploymentConfig": config}


def runtime_request(component: str, copies: int) -> dict:
    return {"InferenceComponentName": component, "DesiredRuntimeConfig": {"CopyCount": copies}}


def copy_counts(describe: dict | None) -> dict | None:
    rc = (describe or {}).get("RuntimeConfig") or {}
    if "DesiredCopyCount" not in rc and "CurrentCopyCount" not in rc:
        return None
    return {"current": rc.get("CurrentCopyCount", 0), "desired": rc.get("DesiredCopyCount", 0)}


# Adapter inference components -------------------------------------------------------------
# Each of model.adapters is an adapter component on the resource's component: it has no copies or
# compute of its own (the base's copies load it), and adding, changing or removing one touches
# neither the base model nor the other adapters. A LoRA fine-tune the model comes from
# (model.fromFinetune) is the model itself: its adapter stays in the base, as the default.

def split_adapters(resolved) -> tuple[dict[str, str], dict[str, str]]:
    """(adapters the base model carries, adapters that become adapter components) of a
    plan.model_source.Resolved."""
    base = {n: u for n, u in resolved.adapters.items() if n == resolved.default_adapter}
    return base, {n: u for n, u in resolved.adapters.items() if n not in base}


def adapter_slots(base_adapters: dict[str, str]) -> int:
    """Adapter slots the base's engine keeps: its own adapters and room for every adapter the
    spec may list, so adding one later needs no new model."""
    from llama_operator.spec.endpoint import MAX_ADAPTERS

    return len(base_adapters) + MAX_ADAPTERS


def adapter_specification(base: str, artifact_url: str) -> dict:
    # no ModelName, compute or copy count: the base's copies load the adapter
    return {"BaseInferenceComponentName": base, "Container": {"ArtifactUrl": artifact_url}}


def adapter_create_request(*, component: str, endpoint: str, base: str, artifact_url: str, tags: list) -> dict:
    return {
        "InferenceComponentName": component,
        "EndpointName": endpoint,
        "VariantName": VARIANT,
        "Specification": adapter_specification(base, artifact_url),
        "Tags": tags,
    }


def adapter_update_request(*, component: str, base: str, artifact_url: str) -> dict:
    return {"InferenceComponentName": component, "Specification": adapter_specification(base, artifact_url)}


def adapter_artifact(describe: dict | None) -> str | None:
    return (((describe or {}).get("Specification") or {}).get("Container") or {}).get("ArtifactUrl")
