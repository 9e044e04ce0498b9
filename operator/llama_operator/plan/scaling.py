"""LlamaEndpoint spec.scaling -> Application Auto Scaling requests (pure).

The endpoint's one variant is the scalable target; one target-tracking policy holds SageMaker's
SageMakerVariantInvocationsPerInstance metric (invocations a minute per instance) at the spec's
target. Both calls are upserts in Application Auto Scaling, so sending them again is harmless;
`applied_hash` lets the handler skip them when nothing changed."""

from __future__ import annotations

import hashlib
import json

from llama_operator.plan.endpoint import VARIANT

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
POLICY_NAME = "llama-operator-invocations-per-instance"


def resource_id(endpoint_name: str, variant: str = VARIANT) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant}"


def _target(endpoint_name: str) -> dict:
    return {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint_name), "ScalableDimension": DIMENSION}


def register_request(scaling, endpoint_name: str) -> dict:
    """RegisterScalableTarget for `scaling` (spec.endpoint.Scaling)."""
    return {**_target(endpoint_name), "MinCapacity": scaling.min_instances, "MaxCapacity": scaling.max_instances}


def policy_request(scaling, endpoint_name: str) -> dict:
    """PutScalingPolicy: target tracking on invocations per instance."""
    return {
        **_target(endpoint_name),
        "PolicyName": POLICY_NAME,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(scaling.target.invocations_per_instance),
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleInCooldown": scaling.scale_in_cooldown_seconds,
            "ScaleOutCooldown": scaling.scale_out_cooldown_seconds,
        },
    }


def delete_policy_request(endpoint_name: str) -> dict:
    return {**_target(endpoint_name), "PolicyName": POLICY_NAME}


def deregister_request(endpoint_name: str) -> dict:
    return _target(endpoint_name)


def activities_request(endpoint_name: str, max_results: int = 1) -> dict:
    return {"ServiceNamespace": NAMESPACE, "ResourceId": resource_id(endpoint_name),
            "ScalableDimension": DIMENSION, "MaxResults": max_results}


def applied_hash(scaling, endpoint_name: str) -> str:
    doc = [register_request(scaling, endpoint_name), policy_request(scaling, endpoint_name)]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def capacity_request(endpoint_name: str, count: int) -> dict:
    """UpdateEndpointWeightsAndCapacities back to `count` (the spec's instanceCount once scaling
    is removed)."""
    return {"EndpointName": endpoint_name,
            "DesiredWeightsAndCapacities": [{"VariantName": VARIANT, "DesiredInstanceCount": count}]}
