"""LlamaEndpoint spec.scaling -> Application Auto Scaling (and CloudWatch) requests (pure).

Mode variant: the endpoint's one variant is the scalable target (its instance count); one
target-tracking policy holds SageMakerVariantInvocationsPerInstance (invocations a minute per
instance) at the spec's target.

Mode inferenceComponents: the model's inference component is the target (its copy count); one
target-tracking policy holds requests in flight per copy. With minInstances 0 target tracking may
take the copies to zero, and cannot bring them back (there is no per-copy metric without a copy),
so a step-scaling policy adds one copy when the CloudWatch alarm on SageMaker's
NoCapacityInvocationFailures metric (a request that found no copy) fires.

Registration and policies are upserts, so sending them again is harmless; `applied_hash` lets the
handler skip them when nothing changed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from llama_operator.plan.endpoint import VARIANT

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
COMPONENT_DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
COMPONENT_METRIC = "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"
POLICY_NAME = "llama-operator-invocations-per-instance"
COMPONENT_POLICY_NAME = "llama-operator-concurrency-per-copy"
WAKE_POLICY_NAME = "llama-operator-wake-from-zero"
POLICY_NAMES = (POLICY_NAME, COMPONENT_POLICY_NAME, WAKE_POLICY_NAME)
NO_CAPACITY_METRIC = "NoCapacityInvocationFailures"
WAKE_ALARM_PERIOD = 10       # seconds; high-resolution alarm: the wake-up should not wait a minute
# Requests keep failing while the woken copy starts; they must not add more copies meanwhile (target
# tracking adds them under load), so the wake-up waits at least this long before acting again.
WAKE_COOLDOWN = 60
_COMPONENT_PREFIX = "inference-component/"


def resource_id(endpoint_name: str, variant: str = VARIANT) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant}"


def component_resource_id(component: str) -> str:
    return _COMPONENT_PREFIX + component


def target_of(rid: str) -> dict:
    """The scalable target a resource id names."""
    dim = COMPONENT_DIMENSION if rid.startswith(_COMPONENT_PREFIX) else DIMENSION
    return {"ServiceNamespace": NAMESPACE, "ResourceId": rid, "ScalableDimension": dim}


def wake_alarm_name(rid: str) -> str | None:
    """The CloudWatch alarm that wakes a component from zero copies (None for a variant)."""
    if not rid.startswith(_COMPONENT_PREFIX):
        return None
    return f"llama-operator-{rid[len(_COMPONENT_PREFIX):]}-no-capacity"


@dataclass
class ScalingRequests:
    """What applying spec.scaling sends: register, then each policy; `alarm` (PutMetricAlarm,
    without AlarmActions) goes last, acting on the last policy's ARN."""
    resource_id: str
    register: dict
    policies: list[dict]
    alarm: dict | None = None
    stale_policies: list[str] = field(default_factory=list)  # deleted if there (a scale-to-zero undone)
    stale_alarm: str | None = None

    def digest(self) -> str:
        doc = [self.register, self.policies, self.alarm]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _tracking(target: dict, name: str, metric: str, value: float, scaling) -> dict:
    return {
        **target,
        "PolicyName": name,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": float(value),
            "PredefinedMetricSpecification": {"PredefinedMetricType": metric},
            "ScaleInCooldown": scaling.scale_in_cooldown_seconds,
            "ScaleOutCooldown": scaling.scale_out_cooldown_seconds,
        },
    }


def variant_requests(scaling, endpoint_name: str) -> ScalingRequests:
    """spec.scaling (spec.endpoint.Scaling) of a variant-mode endpoint."""
    rid = resource_id(endpoint_name)
    target = target_of(rid)
    return ScalingRequests(
        rid, {**target, "MinCapacity": scaling.min_instances, "MaxCapacity": scaling.max_instances},
        [_tracking(target, POLICY_NAME, METRIC, scaling.target.invocations_per_instance, scaling)])


def component_requests(scaling, component: str, copies: tuple[int, int]) -> ScalingRequests:
    """spec.scaling of an inferenceComponents endpoint; `copies`: (min, max) copy counts."""
    rid = component_resource_id(component)
    target = target_of(rid)
    policies = [_tracking(target, COMPONENT_POLICY_NAME, COMPONENT_METRIC,
                          scaling.target.concurrent_requests_per_copy, scaling)]
    out = ScalingRequests(rid, {**target, "MinCapacity": copies[0], "MaxCapacity": copies[1]}, policies)
    if copies[0] > 0:
        out.stale_policies, out.stale_alarm = [WAKE_POLICY_NAME], wake_alarm_name(rid)
        return out
    policies.append({
        **target,
        "PolicyName": WAKE_POLICY_NAME,
        "PolicyType": "StepScaling",
        "StepScalingPolicyConfiguration": {
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Maximum",
            "Cooldown": max(scaling.scale_out_cooldown_seconds, WAKE_COOLDOWN),
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        },
    })
    out.alarm = {
        "AlarmName": wake_alarm_name(rid),
        "AlarmDescription": f"A request found no copy of inference component {component}: add one",
        "Namespace": "AWS/SageMaker",
        "MetricName": NO_CAPACITY_METRIC,
        "Dimensions": [{"Name": "InferenceComponentName", "Value": component}],
        "Statistic": "Maximum",
        "Period": WAKE_ALARM_PERIOD,
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",  # no datapoint: no request found the component empty
    }
    return out


def policy_removals(rid: str) -> list[dict]:
    """DeleteScalingPolicy for every policy the operator may have put on the target."""
    names = POLICY_NAMES[1:] if rid.startswith(_COMPONENT_PREFIX) else POLICY_NAMES[:1]
    return [{**target_of(rid), "PolicyName": n} for n in names]


def activities_request(rid: str, max_results: int = 1) -> dict:
    return {**target_of(rid), "MaxResults": max_results}


def capacity_request(endpoint_name: str, count: int) -> dict:
    """UpdateEndpointWeightsAndCapacities back to `count` (the spec's instanceCount once scaling
    is removed)."""
    return {"EndpointName": endpoint_name,
            "DesiredWeightsAndCapacities": [{"VariantName": VARIANT, "DesiredInstanceCount": count}]}
