"""Application Auto Scaling for SageMaker endpoint variants and inference components, served by the
local SageMaker service (JSON 1.1, X-Amz-Target "AnyScaleFrontendService.<Operation>", as botocore's
`application-autoscaling` client speaks it), and a scaler that really scales the variants' local
model servers and the components' copies from the load it measures.

What is emulated
----------------
* Operations: RegisterScalableTarget, DeregisterScalableTarget, DescribeScalableTargets,
  PutScalingPolicy, DeleteScalingPolicy, DescribeScalingPolicies, DescribeScalingActivities.
* Scope: ServiceNamespace "sagemaker" with ScalableDimension "sagemaker:variant:DesiredInstanceCount"
  (ResourceId "endpoint/<EndpointName>/variant/<VariantName>") or
  "sagemaker:inference-component:DesiredCopyCount" (ResourceId "inference-component/<Name>").
  Anything else (other namespaces, serverless provisioned concurrency) is refused with
  ValidationException saying so, rather than accepted and ignored.
* Rules as AWS applies them: registration needs the endpoint and its variant (a variant that hosts
  a model: the instances of a variant for inference components follow managed instance scaling), or
  the inference component (not an adapter inference component: it has no copies), InService; a
  first registration needs MinCapacity and MaxCapacity, MinCapacity <= MaxCapacity, MinCapacity >= 1
  for an instance variant and >= 0 for a component; registering again is an upsert of
  min/max/suspension (policies kept); PutScalingPolicy is an upsert by PolicyName and needs a
  registered target (ObjectNotFoundException); Deregister removes the target's policies; unknown
  targets and policies are ObjectNotFoundException; DeleteEndpoint deregisters the endpoint's
  targets and DeleteInferenceComponent the component's; UpdateEndpoint refuses to change a scaled
  variant's instance type or drop it (api.py).
* Policies: TargetTrackingScaling with a predefined metric of the dimension:
  SageMakerVariantInvocationsPerInstance for variants; SageMakerInferenceComponentInvocationsPerCopy
  and SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution for components.
  PutScalingPolicy answers the CloudWatch alarms AWS would create:
  "TargetTracking-<ResourceId>-AlarmHigh-<uuid>" and, unless DisableScaleIn, "...-AlarmLow-<uuid>".
  StepScaling for inference components (how a component scaled to zero copies scales out again:
  target tracking has no per-copy metric at zero), validated as AWS does (step_alarms.check_config)
  and triggered by CloudWatch alarms the user creates in moto's CloudWatch (step_alarms.py).
  StepScaling for variants, PredictiveScaling, customized metrics and other predefined metrics are
  refused with ValidationException.
* State (targets, policies, activities) is kept with the service's Store, so it survives a restart.

The scaler and how closely it follows AWS
-----------------------------------------
One daemon thread evaluates every policy on a clock of metric periods; each period has 6 sub-periods
(the 10-second datapoints of high-resolution metrics). The metrics are measured by the service:
* InvocationsPerInstance (variants) / InvocationsPerCopy (components): the invocations routed to the
  variant or component during the 1-minute period, divided by its running instances or copies and
  normalised to per minute (x 60 / period), so TargetValue means what it means on AWS.
* ConcurrentRequestsPerCopy (high resolution): the mean number of requests in flight per copy
  (requests' in-flight time integrated over the datapoint's window, divided by its length and the
  copies), per 10-second sub-period, and per period.
* With no running copy there is no per-copy datapoint: the alarms go to INSUFFICIENT_DATA (their
  counts restart) and target tracking never scales a component out of zero.
Alarms (each policy's, as AWS's target tracking creates them):
* 1-minute metrics: high alarm metric > TargetValue for 3 consecutive periods; low alarm metric <
  90% of TargetValue for 15 consecutive periods.
* ConcurrentRequestsPerCopyHighResolution, as AWS describes its alarms: high alarm one 1-minute
  datapoint > TargetValue (scale-out after 1 minute); low alarm 90 consecutive 10-second datapoints
  < 90% of TargetValue (scale-in after 15 minutes).
* High alarm -> scale out to ceil(current * metric / TargetValue), at most MaxCapacity. While the
  alarm stays in ALARM it keeps triggering the policy at each evaluation, as a CloudWatch alarm with
  an Auto Scaling action does. Low alarm -> scale in to max(ceil(current * metric / TargetValue),
  MinCapacity) (0 for an idle component with MinCapacity 0); never with DisableScaleIn.
* Cooldowns: no scale-out within ScaleOutCooldown of the last scale-out; no scale-in within
  ScaleInCooldown of the last scaling of either direction (defaults 300 s each, as AWS).
* Several policies on one target: any policy asking for more capacity wins (the largest); capacity
  is removed only when every target tracking policy asks for less.
* Step scaling: an alarm in ALARM whose AlarmActions name the policy applies the step whose interval
  holds (metric - Threshold): ChangeInCapacity, PercentChangeInCapacity (MinAdjustmentMagnitude) or
  ExactCapacity from the current DesiredCopyCount, clamped to Min/MaxCapacity; not again while its
  activity runs nor within the policy's Cooldown (default 300 s) after the activity ended.
* SuspendedState DynamicScalingOutSuspended / DynamicScalingInSuspended stop the respective
  direction; ScheduledScalingSuspended is kept and reported (there are no scheduled actions).
* Min/Max clamp: when the current count falls outside new bounds the target is set to the bound at
  once (Cause "minimum capacity was set to N" / "maximum capacity was set to N").
* Every scaling is a scaling activity (InProgress, then Successful, or Failed with StatusMessage).
  A variant scales through UpdateEndpointWeightsAndCapacities' own path (the endpoint goes Updating
  -> InService with its state-change events; capacity beyond --max-instances fails the activity
  with ResourceLimitExceeded's message); a component through UpdateInferenceComponentRuntimeConfig's
  (Updating -> InService; managed instance scaling follows the copies). New servers take traffic
  once they pass /ping, removed ones are drained.
* Time compression: `--autoscaling-period SECONDS` (default 60, real time) is the length of one
  metric period; cooldowns and step-scaling alarms' Periods are scaled by period/60 too. With
  `--autoscaling-period 1`, the high alarm needs 3 s of load, the low alarm 15 s of quiet, a 300 s
  cooldown lasts 5 s and an alarm's 30 s Period 0.5 s.

Where it differs from AWS
-------------------------
* Periods with no invocations count as a datapoint of 0 (idle scales in to MinCapacity). On AWS a
  minute without invocations may publish no datapoint at all, which can leave the low alarm in
  INSUFFICIENT_DATA and the variant un-scaled-in.
* The metrics are measured by the service itself, not read from CloudWatch (target tracking's alarms
  do not exist in moto's CloudWatch; their names and ARNs are only reported). Datapoints are
  evaluated on the scaler's tick, not on CloudWatch's minute boundaries, and there is no metric
  publication delay. Step scaling's alarms are the user's own, read from moto's CloudWatch.
* AWS's target tracking scales in more gradually and may add capacity during a scale-out cooldown
  when the alarm asks for more than the previous activity added; here the rules above are applied
  as stated. Step scaling's Cooldown simply blocks the policy (AWS lets a larger scale-out through).
* An endpoint or component that is not InService (Updating, SystemUpdating) is simply not scaled
  this period; the alarms keep their state and act once it is back.
* Activities are kept (100 per resource) after the target is deregistered, like AWS's history, but
  only until the state dir is removed. IncludeNotScaledActivities is accepted; no "not scaled"
  activities are recorded.
* In the service's scheduled mode nothing serves, so there is no metric: the scaler only applies
  Min/Max clamps there.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass

from llama_operator.local.sagemaker import names, step_alarms
from llama_operator.local.sagemaker.context import Context
from llama_operator.local.sagemaker.errors import (
    AwsError,
    InvalidNextToken,
    LimitExceeded,
    ObjectNotFound,
    UnknownOperation,
    ValidationError,
)

log = logging.getLogger(__name__)

TARGET_PREFIX = "AnyScaleFrontendService"  # botocore's application-autoscaling targetPrefix
NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
INFERENCE_COMPONENT_DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
IC_INVOCATIONS = "SageMakerInferenceComponentInvocationsPerCopy"
IC_CONCURRENCY = "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"
METRICS = {DIMENSION: (METRIC,), INFERENCE_COMPONENT_DIMENSION: (IC_INVOCATIONS, IC_CONCURRENCY)}
HIGH_RESOLUTION = {IC_CONCURRENCY}
TARGET_KIND = "scalable-target"         # Store kinds (store.FOLDERS)
ACTIVITY_KIND = "scaling-activities"
SERVICE_ROLE = (f"arn:aws:iam::{names.ACCOUNT}:role/aws-service-role/sagemaker.application-autoscaling."
                "amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")
SUBTICKS = 6                  # 10-second datapoints per 1-minute period
HIGH_DATAPOINTS = 3           # consecutive periods above target before scaling out
LOW_DATAPOINTS = 15           # consecutive periods below LOW_FRACTION * target before scaling in
HR_HIGH_DATAPOINTS = 1        # high resolution: one 1-minute datapoint above target
HR_LOW_DATAPOINTS = 90        # high resolution: 90 10-second datapoints below LOW_FRACTION * target
LOW_FRACTION = 0.9
DEFAULT_COOLDOWN = 300
MAX_POLICIES = 50             # per scalable target (AWS's quota)
MAX_RESULTS = 50
MAX_ACTIVITIES = 100          # kept per resource
_RESOURCE = re.compile(r"^endpoint/([^/]+)/variant/([^/]+)$")
_COMPONENT = re.compile(r"^inference-component/([^/]+)$")


def _key(endpoint: str, variant: str) -> str:
    # Endpoint and variant names are [a-zA-Z0-9-]: a dot joins them unambiguously, as a file name.
    return f"{endpoint}.{variant}"


@dataclass(frozen=True)
class _Target:
    """The resource a request names: an endpoint's variant or an inference component."""
    rid: str
    dimension: str
    endpoint: str = ""
    variant: str = ""
    component: str = ""

    @property
    def key(self) -> str:
        # "_" is in no endpoint or component name: a component's key never meets a variant's
        return f"ic_{self.component}" if self.component else _key(self.endpoint, self.variant)

    @property
    def unit(self) -> str:
        return "copy" if self.component else "instance"


def _parse(rid: str, dimension: str) -> _Target:
    if dimension == INFERENCE_COMPONENT_DIMENSION:
        m = _COMPONENT.match(rid or "")
        if not m:
            raise ValidationError(f"Unsupported resource ID {rid!r} for scalable dimension {dimension}: expected "
                                  "inference-component/<InferenceComponentName>.")
        return _Target(rid, dimension, component=m.group(1))
    m = _RESOURCE.match(rid or "")
    if not m:
        raise ValidationError(f"Unsupported resource ID {rid!r} for scalable dimension {DIMENSION}: expected "
                              "endpoint/<EndpointName>/variant/<VariantName>.")
    return _Target(rid, dimension, endpoint=m.group(1), variant=m.group(2))


def _of(record: dict) -> _Target:
    t = record["target"]
    return _parse(t["ResourceId"], t["ScalableDimension"])


class _Alarms:
    """A policy's alarm state: consecutive datapoints above / below, and the latest values."""

    def __init__(self):
        self.high = 0
        self.low = 0
        self.high_value: float | None = None
        self.low_value: float | None = None


class AutoScaling:
    def __init__(self, ctx: Context, api, endpoints, period: float = 60.0, components=None):
        self.ctx, self.api, self.endpoints, self.components = ctx, api, endpoints, components
        self.period = float(period)
        self.lock = ctx.store.lock  # one lock with SageMaker's state: api.py calls in while holding it
        self._alarms: dict[tuple[str, str], _Alarms] = {}   # (target key, policy name)
        self._seen: dict[tuple, tuple[float, float]] = {}    # (key, measure, window) -> (counter, time) last read
        self._last_out: dict[str, float] = {}                # target key -> monotonic time of last scale-out
        self._last_any: dict[str, float] = {}                # ... of last scaling of either direction
        self._last_step: dict[tuple[str, str], float] = {}   # (key, step policy) -> its last scaling
        self._busy: set[str] = set()                         # targets with an activity in progress
        self.alarms = step_alarms.StepAlarms(
            ctx.region, self.period / 60.0,
            components.no_capacity_failures if components is not None else (lambda *_: 0))
        self._subtick = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # the API -------------------------------------------------------------------------------
    def call(self, operation: str, params: dict) -> dict:
        handler = getattr(self, f"op_{operation}", None)
        if handler is None:
            raise UnknownOperation(f"Operation {operation} is not supported by the local Application Auto Scaling "
                                   "service (SageMaker endpoint variants and inference components only).")
        return handler(params or {})

    def _check_namespace(self, p: dict) -> None:
        ns = p.get("ServiceNamespace")
        if ns != NAMESPACE:
            raise ValidationError(f"Unsupported service namespace {ns!r}: the local service emulates Application "
                                  f"Auto Scaling for SageMaker endpoint variants and inference components only "
                                  f"(ServiceNamespace '{NAMESPACE}').")

    def _check_dimension(self, dimension) -> None:
        if dimension not in METRICS:
            raise ValidationError(f"Unsupported scalable dimension {dimension!r} for service namespace "
                                  f"{NAMESPACE}: the local service supports {DIMENSION} and "
                                  f"{INFERENCE_COMPONENT_DIMENSION} only.")

    def _resource(self, p: dict) -> _Target:
        """The target a request names."""
        self._check_namespace(p)
        self._check_dimension(p.get("ScalableDimension"))
        return _parse(p.get("ResourceId") or "", p["ScalableDimension"])

    def _check_filter(self, p: dict) -> None:
        self._check_namespace(p)
        if p.get("ScalableDimension") is not None:
            self._check_dimension(p["ScalableDimension"])

    def _not_registered(self, t: _Target) -> ObjectNotFound:
        return ObjectNotFound(f"No scalable target registered for service namespace: {NAMESPACE}, resource ID: "
                              f"{t.rid}, scalable dimension: {t.dimension}")

    def _target(self, t: _Target) -> dict | None:
        return self.ctx.store.get(TARGET_KIND, t.key)

    @staticmethod
    def _page(items: list[dict], p: dict, key: str) -> dict:
        size = p.get("MaxResults")
        if size is not None and not 1 <= int(size) <= MAX_RESULTS:
            raise ValidationError(f"1 validation error detected: Value '{size}' at 'maxResults' failed to satisfy "
                                  f"constraint: Member must have value less than or equal to {MAX_RESULTS}")
        size = int(size or MAX_RESULTS)
        token = p.get("NextToken")
        try:
            start = int(token) if token else 0
        except ValueError:
            raise InvalidNextToken("Invalid token") from None
        if start < 0 or (token and start > len(items)):
            raise InvalidNextToken("Invalid token")
        out = {key: items[start:start + size]}
        if start + size < len(items):
            out["NextToken"] = str(start + size)
        return out

    def _resource_filter(self, p: dict, key: str = "ResourceId") -> set[str] | None:
        ids = p.get(key)
        if ids is None:
            if p.get("ScalableDimension") is not None:
                raise ValidationError("If you specify a scalable dimension, you must also specify a resource ID.")
            return None
        return set([ids] if isinstance(ids, str) else ids)

    def _check_resource(self, t: _Target) -> None:
        """What registration needs: the variant (hosting a model) or the component, InService."""
        if t.component:
            d = self.components.component(t.component) if self.components is not None else None
            status = d["InferenceComponentStatus"] if d else None
            if d is None or status == "Deleting":
                raise ValidationError(f"Could not find inference component "
                                      f"\"{names.arn('inference-component', t.component, self.ctx.region)}\" for "
                                      f"scalable target {t.rid}.")
            base = (d.get("Specification") or {}).get("BaseInferenceComponentName")
            if base:  # an adapter inference component (adapters.py)
                raise ValidationError(f"Inference component {t.component} is an adapter inference component: it has "
                                      f"no copies of its own ({t.dimension}) and runs on the copies of its base "
                                      f"inference component {base}. Register inference-component/{base} instead.")
            if status != "InService":
                raise ValidationError(f"Inference component {t.component} is {status}: a scalable target can be "
                                      "registered once the inference component is InService.")
            return
        record = self.ctx.store.get("endpoint", t.endpoint)
        status = record["describe"]["EndpointStatus"] if record else None
        if record is None or status == "Deleting":
            raise ValidationError(f"Could not find endpoint \"{names.arn('endpoint', t.endpoint, self.ctx.region)}\""
                                  f" for scalable target {t.rid}.")
        if status in ("Creating", "Failed"):
            raise ValidationError(f"Endpoint {t.endpoint} is {status}: a scalable target can be registered once "
                                  "the endpoint is InService.")
        config = self.ctx.store.get("endpoint-config", record["describe"]["EndpointConfigName"])
        pvs = {pv["VariantName"]: pv for pv in (config or {}).get("describe", {}).get("ProductionVariants", [])}
        if t.variant not in pvs:
            raise ValidationError(f"The variant {t.variant} does not exist in endpoint {t.endpoint} "
                                  f"(variants: {', '.join(pvs) or 'none'}).")
        if not pvs[t.variant].get("ModelName"):
            raise ValidationError(f"The variant {t.variant} of endpoint {t.endpoint} hosts inference components: "
                                  "its instance count follows managed instance scaling (ManagedInstanceScaling). "
                                  f"Register its inference components ({INFERENCE_COMPONENT_DIMENSION}) instead.")

    def op_RegisterScalableTarget(self, p: dict) -> dict:
        t = self._resource(p)
        lo, hi = p.get("MinCapacity"), p.get("MaxCapacity")
        with self.lock:
            self._check_resource(t)
            existing = self._target(t)
            if existing is None and (lo is None or hi is None):
                raise ValidationError("MinCapacity and MaxCapacity are required when registering a new scalable "
                                      "target.")
            target = copy.deepcopy(existing["target"]) if existing else {
                "ServiceNamespace": NAMESPACE, "ResourceId": t.rid, "ScalableDimension": t.dimension,
                "RoleARN": p.get("RoleARN") or SERVICE_ROLE, "CreationTime": time.time(),
                "ScalableTargetARN": f"arn:aws:application-autoscaling:{self.ctx.region}:{names.ACCOUNT}:"
                                     f"scalable-target/{uuid.uuid4().hex}",
                "SuspendedState": {"DynamicScalingInSuspended": False, "DynamicScalingOutSuspended": False,
                                   "ScheduledScalingSuspended": False},
            }
            new_lo = int(lo) if lo is not None else target["MinCapacity"]
            new_hi = int(hi) if hi is not None else target["MaxCapacity"]
            if new_lo < 0 or (new_lo < 1 and not t.component):
                raise ValidationError(f"Invalid MinCapacity {new_lo} for {t.rid}: the minimum capacity of a SageMaker "
                                      "endpoint variant must be at least 1 (instance-based variants cannot scale to "
                                      "zero)." if not t.component else
                                      f"Invalid MinCapacity {new_lo} for {t.rid}: it must not be negative.")
            if new_lo > new_hi:
                raise ValidationError(f"Minimum capacity ({new_lo}) cannot be greater than maximum capacity "
                                      f"({new_hi}).")
            target["MinCapacity"], target["MaxCapacity"] = new_lo, new_hi
            if p.get("RoleARN"):
                target["RoleARN"] = p["RoleARN"]
            for k, v in (p.get("SuspendedState") or {}).items():
                target["SuspendedState"][k] = bool(v)
            out = existing or {"name": t.key, "policies": []}
            out["target"] = target
            if p.get("Tags"):
                out["tags"] = {**out.get("tags", {}), **p["Tags"]}
            self.ctx.store.put(TARGET_KIND, out)
            self._clamp(t.key)
        return {"ScalableTargetARN": target["ScalableTargetARN"]}

    def op_DeregisterScalableTarget(self, p: dict) -> dict:
        t = self._resource(p)
        with self.lock:
            if self._target(t) is None:
                raise ObjectNotFound(f"No scalable target found for service namespace: {NAMESPACE}, resource ID: "
                                     f"{t.rid}, scalable dimension: {t.dimension}")
            self._forget(t.key)
        return {}

    def op_DescribeScalableTargets(self, p: dict) -> dict:
        self._check_filter(p)
        ids = self._resource_filter(p, "ResourceIds")
        dim = p.get("ScalableDimension")
        with self.lock:
            items = [copy.deepcopy(r["target"]) for r in self._records()
                     if (ids is None or r["target"]["ResourceId"] in ids)
                     and (dim is None or r["target"]["ScalableDimension"] == dim)]
        return self._page(items, p, "ScalableTargets")

    def op_PutScalingPolicy(self, p: dict) -> dict:
        t = self._resource(p)
        name = p.get("PolicyName") or ""
        with self.lock:
            record = self._target(t)
            if record is None:
                raise self._not_registered(t)
            existing = next((x for x in record["policies"] if x["PolicyName"] == name), None)
            ptype = p.get("PolicyType") or (existing or {}).get("PolicyType")
            if ptype is None:
                raise ValidationError("PolicyType is required when creating a scaling policy.")
            if p.get("PredictiveScalingPolicyConfiguration") or ptype not in ("TargetTrackingScaling", "StepScaling") \
                    or (ptype == "StepScaling" and not t.component):
                raise ValidationError(f"Unsupported policy type {ptype!r} for {t.dimension}: the local Application "
                                      "Auto Scaling service supports target tracking only (PolicyType "
                                      "TargetTrackingScaling) for endpoint variants, and target tracking and step "
                                      "scaling (StepScaling) for inference components.")
            if ptype == "TargetTrackingScaling":
                if p.get("StepScalingPolicyConfiguration"):
                    raise ValidationError("StepScalingPolicyConfiguration is not valid for a policy of type "
                                          "TargetTrackingScaling.")
                config = p.get("TargetTrackingScalingPolicyConfiguration")
                if config is None:
                    raise ValidationError("TargetTrackingScalingPolicyConfiguration is required for a policy of type "
                                          "TargetTrackingScaling.")
                config = self._check_target_tracking(config, t.dimension)
            else:
                if p.get("TargetTrackingScalingPolicyConfiguration"):
                    raise ValidationError("TargetTrackingScalingPolicyConfiguration is not valid for a policy of "
                                          "type StepScaling.")
                config = step_alarms.check_config(p.get("StepScalingPolicyConfiguration"), ValidationError)
            if existing is None and len(record["policies"]) >= MAX_POLICIES:
                raise LimitExceeded(f"A scalable target may have at most {MAX_POLICIES} scaling policies.")
            if existing is None:
                policy_id = str(uuid.uuid4())
                existing = {
                    "PolicyARN": f"arn:aws:autoscaling:{self.ctx.region}:{names.ACCOUNT}:scalingPolicy:{policy_id}:"
                                 f"resource/{NAMESPACE}/{t.rid}:policyName/{name}",
                    "PolicyName": name, "ServiceNamespace": NAMESPACE, "ResourceId": t.rid,
                    "ScalableDimension": t.dimension, "CreationTime": time.time(),
                }
                record["policies"].append(existing)
            existing["PolicyType"] = ptype
            out = {"PolicyARN": existing["PolicyARN"]}
            if ptype == "TargetTrackingScaling":
                existing.pop("StepScalingPolicyConfiguration", None)
                existing["TargetTrackingScalingPolicyConfiguration"] = config
                existing["Alarms"] = self._alarm_list(t.rid, existing.get("Alarms"),
                                                      bool(config.get("DisableScaleIn")))
                out["Alarms"] = copy.deepcopy(existing["Alarms"])
            else:  # its alarms are the user's (DescribeScalingPolicies lists those that name it)
                existing.pop("TargetTrackingScalingPolicyConfiguration", None)
                existing["StepScalingPolicyConfiguration"] = config
                existing["Alarms"] = []
            self.ctx.store.put(TARGET_KIND, record)
            self._alarms.pop((record["name"], name), None)
            return out

    def _alarm_list(self, rid: str, old: list[dict] | None, disable_scale_in: bool) -> list[dict]:
        by_kind = {}
        for a in old or []:
            by_kind["High" if "-AlarmHigh-" in a["AlarmName"] else "Low"] = a
        out = []
        for kind in ("High",) if disable_scale_in else ("High", "Low"):
            if kind not in by_kind:
                alarm = f"TargetTracking-{rid}-Alarm{kind}-{uuid.uuid4()}"
                by_kind[kind] = {"AlarmName": alarm,
                                 "AlarmARN": f"arn:aws:cloudwatch:{self.ctx.region}:{names.ACCOUNT}:alarm:{alarm}"}
            out.append(by_kind[kind])
        return out

    @staticmethod
    def _check_target_tracking(config: dict, dimension: str) -> dict:
        config = copy.deepcopy(config)
        allowed = METRICS[dimension]
        value = config.get("TargetValue")
        if value is None or not float(value) > 0:
            raise ValidationError(f"Invalid TargetValue {value!r}: it must be a number greater than 0.")
        if config.get("CustomizedMetricSpecification"):
            raise ValidationError(f"CustomizedMetricSpecification is not supported by the local Application Auto "
                                  f"Scaling service: use PredefinedMetricSpecification {' or '.join(allowed)}.")
        metric = (config.get("PredefinedMetricSpecification") or {})
        if not metric:
            raise ValidationError("A target tracking policy needs PredefinedMetricSpecification or "
                                  "CustomizedMetricSpecification.")
        if metric.get("PredefinedMetricType") not in allowed:
            raise ValidationError(f"Unsupported PredefinedMetricType {metric.get('PredefinedMetricType')!r} for "
                                  f"{dimension}: the local service supports {' and '.join(allowed)} only.")
        if metric.get("ResourceLabel"):
            raise ValidationError(f"ResourceLabel is not valid for predefined metric type "
                                  f"{metric['PredefinedMetricType']}.")
        for k in ("ScaleInCooldown", "ScaleOutCooldown"):
            if config.get(k) is not None and int(config[k]) < 0:
                raise ValidationError(f"Invalid {k} {config[k]}: it must not be negative.")
        return config

    def op_DeleteScalingPolicy(self, p: dict) -> dict:
        t = self._resource(p)
        name = p.get("PolicyName") or ""
        with self.lock:
            record = self._target(t)
            policies = (record or {}).get("policies", [])
            if not any(x["PolicyName"] == name for x in policies):
                raise ObjectNotFound(f"No scaling policy found for service namespace: {NAMESPACE}, resource ID: "
                                     f"{t.rid}, scalable dimension: {t.dimension}, policy name: {name}")
            record["policies"] = [x for x in policies if x["PolicyName"] != name]
            self.ctx.store.put(TARGET_KIND, record)
            self._alarms.pop((record["name"], name), None)
            self._last_step.pop((record["name"], name), None)
        return {}

    def op_DescribeScalingPolicies(self, p: dict) -> dict:
        self._check_filter(p)
        ids = self._resource_filter(p)
        wanted = set(p["PolicyNames"]) if p.get("PolicyNames") else None
        dim = p.get("ScalableDimension")
        with self.lock:
            items = [copy.deepcopy(x) for r in self._records() for x in r["policies"]
                     if (ids is None or x["ResourceId"] in ids) and (wanted is None or x["PolicyName"] in wanted)
                     and (dim is None or x["ScalableDimension"] == dim)]
            for x in items:
                if x["PolicyType"] == "StepScaling":
                    x["Alarms"] = self.alarms.for_policy(x["PolicyARN"])
        return self._page(items, p, "ScalingPolicies")

    def op_DescribeScalingActivities(self, p: dict) -> dict:
        self._check_filter(p)
        ids = self._resource_filter(p)
        dim = p.get("ScalableDimension")
        with self.lock:
            items = [copy.deepcopy(a) for r in self.ctx.store.all(ACTIVITY_KIND) for a in r["activities"]
                     if (ids is None or a["ResourceId"] in ids) and (dim is None or a["ScalableDimension"] == dim)]
        items.sort(key=lambda a: a["StartTime"], reverse=True)
        return self._page(items, p, "ScalingActivities")

    # what SageMaker's API asks ----------------------------------------------------------------
    def _records(self) -> list[dict]:
        return sorted(self.ctx.store.all(TARGET_KIND), key=lambda r: r["target"]["CreationTime"])

    def scaled_variants(self, endpoint: str) -> list[str]:
        """The endpoint's variants that are registered scalable targets."""
        with self.lock:
            targets = [_of(r) for r in self._records()]
            return [t.variant for t in targets if not t.component and t.endpoint == endpoint]

    def endpoint_deleted(self, endpoint: str) -> None:
        """DeleteEndpoint: its scalable targets and their policies are deregistered."""
        with self.lock:
            for variant in self.scaled_variants(endpoint):
                self._forget(_key(endpoint, variant))

    def component_deleted(self, name: str) -> None:
        """DeleteInferenceComponent: its scalable target and policies are deregistered."""
        with self.lock:
            self._forget(f"ic_{name}")

    def _forget(self, key: str) -> None:
        self.ctx.store.delete(TARGET_KIND, key)
        for d in (self._alarms, self._seen, self._last_step):
            for k in [k for k in d if k[0] == key]:
                del d[k]
        for d in (self._last_out, self._last_any):
            d.pop(key, None)
        self._busy.discard(key)

    # the scaler ---------------------------------------------------------------------------
    def recover(self) -> None:
        """After a restart: an activity that was in progress ended with the service."""
        with self.lock:
            for record in self.ctx.store.all(ACTIVITY_KIND):
                for a in record["activities"]:
                    if a["StatusCode"] == "InProgress":
                        a.update(StatusCode="Failed", EndTime=time.time(),
                                 StatusMessage="The local SageMaker service restarted while the activity ran.")
                self.ctx.store.put(ACTIVITY_KIND, record)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="autoscaling", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _step_policy_arns(self) -> set[str]:
        return {x["PolicyARN"] for r in self.ctx.store.all(TARGET_KIND) for x in r["policies"]
                if x.get("PolicyType") == "StepScaling"}

    def _run(self) -> None:
        sub = self.period / SUBTICKS
        next_tick = time.monotonic() + sub
        while not self._stop.wait(max(0.0, next_tick - time.monotonic())):
            next_tick += sub
            self._subtick += 1
            try:  # moto's CloudWatch is read and written outside the service's lock
                self.alarms.refresh(self._step_policy_arns(), every=max(0.5, min(self.period, 5.0)))
                self.tick(full=self._subtick % SUBTICKS == 0)
                self.alarms.push_states()
            except Exception:  # one bad evaluation must not stop scaling
                log.exception("autoscaling: evaluation failed")

    def _cooldown(self, config: dict, key: str, default: int = DEFAULT_COOLDOWN) -> float:
        value = config.get(key)
        return float(default if value is None else value) * self.period / 60.0

    def tick(self, full: bool = True) -> None:
        """One sub-period (`full`: the end of a metric period): datapoints, each policy's alarms, at
        most one scaling per target; then the step-scaling alarms."""
        with self.lock:
            for record in self._records():
                try:
                    self._evaluate(record, full)
                except AwsError as exc:
                    log.info("autoscaling %s: %s", record["target"]["ResourceId"], exc.message)
            for alarm, value in self.alarms.due():
                for arn in alarm.get("AlarmActions") or []:
                    found = self._policy_by_arn(arn)
                    if found is None:
                        continue
                    try:
                        self._apply_step(*found, alarm, value)
                    except AwsError as exc:
                        log.info("autoscaling %s: %s", found[0]["target"]["ResourceId"], exc.message)

    def _policy_by_arn(self, arn: str) -> tuple[dict, dict] | None:
        for record in self._records():
            for policy in record["policies"]:
                if policy["PolicyARN"] == arn and policy.get("PolicyType") == "StepScaling":
                    return record, policy
        return None

    def _running(self, t: _Target) -> tuple[bool, int | None, int | None]:
        """(InService?, current count, desired count) of the variant or component."""
        if t.component:
            d = self.components.component(t.component) if self.components is not None else None
            if d is None:
                return False, None, None
            rc = d.get("RuntimeConfig") or {}
            return d["InferenceComponentStatus"] == "InService", rc.get("CurrentCopyCount"), rc.get("DesiredCopyCount")
        record = self.ctx.store.get("endpoint", t.endpoint)
        if record is None:
            return False, None, None
        d = record["describe"]
        pv = next((pv for pv in d.get("ProductionVariants") or [] if pv["VariantName"] == t.variant), None)
        if pv is None:
            return False, None, None
        return d["EndpointStatus"] == "InService", pv.get("CurrentInstanceCount"), pv.get("DesiredInstanceCount")

    def _clamp(self, key: str) -> bool:
        """Sets the target to its bound when its count is outside; True when it did."""
        record = self.ctx.store.get(TARGET_KIND, key)
        if record is None or key in self._busy:
            return False
        t = record["target"]
        in_service, _, desired = self._running(_of(record))
        if not in_service or desired is None:
            return False
        if desired < t["MinCapacity"]:
            self._scale(record, t["MinCapacity"], f"minimum capacity was set to {t['MinCapacity']}", out=True)
            return True
        if desired > t["MaxCapacity"]:
            self._scale(record, t["MaxCapacity"], f"maximum capacity was set to {t['MaxCapacity']}", out=False)
            return True
        return False

    def _delta(self, key: str, measure: str, window: str, total: float) -> tuple[float, float] | None:
        """(counter change, seconds) since this window's last read; None at the first read."""
        now = time.monotonic()
        previous = self._seen.get((key, measure, window))
        self._seen[(key, measure, window)] = (total, now)
        return None if previous is None else (total - previous[0], now - previous[1])

    def _datapoints(self, t: _Target, key: str, full: bool, current: int | None) -> dict[str, tuple]:
        """metric type -> (high datapoint due?, its value, low datapoint due?, its value); a value is
        None when there is no datapoint (the first read, or no running instance/copy)."""
        out = {}
        if full:
            total = (self.components.invocations(t.component) if t.component
                     else self.endpoints.invocations(t.endpoint, t.variant))
            d = self._delta(key, "invocations", "period", total)
            value = d[0] / current * 60.0 / self.period if d and current else None
            out[IC_INVOCATIONS if t.component else METRIC] = (True, value, True, value)
        if t.component:
            busy = self.components.busy_seconds(t.component)
            low = self._delta(key, "busy", "sub", busy)
            low_value = low[0] / low[1] / current if low and low[1] > 0 and current else None
            high_value = None
            if full:
                high = self._delta(key, "busy", "period", busy)
                high_value = high[0] / high[1] / current if high and high[1] > 0 and current else None
            out[IC_CONCURRENCY] = (full, high_value, True, low_value)
        return out

    def _evaluate(self, record: dict, full: bool) -> None:
        key, t = record["name"], record["target"]
        target = _of(record)
        if full and self._clamp(key):
            return
        if not getattr(self.endpoints, "measures_load", False):
            return
        tracking = [x for x in record["policies"] if x.get("PolicyType", "TargetTrackingScaling") ==
                    "TargetTrackingScaling"]
        in_service, current, _ = self._running(target)
        points = self._datapoints(target, key, full, current)
        proposals = []  # (desired, cause, config) per policy that wants more
        wants_in = []
        evaluated = False
        for policy in tracking:
            config = policy["TargetTrackingScalingPolicyConfiguration"]
            mtype = config["PredefinedMetricSpecification"]["PredefinedMetricType"]
            if mtype not in points:
                wants_in.append(False)
                continue
            high_due, high_value, low_due, low_value = points[mtype]
            goal = float(config["TargetValue"])
            hr = mtype in HIGH_RESOLUTION
            alarms = self._alarms.setdefault((key, policy["PolicyName"]), _Alarms())
            if high_due:  # no datapoint: INSUFFICIENT_DATA, the count starts again
                alarms.high = alarms.high + 1 if high_value is not None and high_value > goal else 0
                alarms.high_value, evaluated = high_value, True
            if low_due:
                alarms.low = alarms.low + 1 if low_value is not None and low_value < LOW_FRACTION * goal else 0
                alarms.low_value, evaluated = low_value, True
            high = next((a["AlarmName"] for a in policy["Alarms"] if "-AlarmHigh-" in a["AlarmName"]), "")
            low = next((a["AlarmName"] for a in policy["Alarms"] if "-AlarmLow-" in a["AlarmName"]), "")
            cause = "monitor alarm {} in state ALARM triggered policy " + policy["PolicyName"]
            if alarms.high >= (HR_HIGH_DATAPOINTS if hr else HIGH_DATAPOINTS) and current:
                desired = min(t["MaxCapacity"], math.ceil(current * alarms.high_value / goal))
                if desired > current:
                    proposals.append((desired, cause.format(high), config))
                wants_in.append(False)
            elif alarms.low >= (HR_LOW_DATAPOINTS if hr else LOW_DATAPOINTS) and current and \
                    not config.get("DisableScaleIn"):
                desired = max(t["MinCapacity"], math.ceil(current * alarms.low_value / goal))
                wants_in.append((desired, cause.format(low), config) if desired < current else False)
            else:
                wants_in.append(False)
        if not evaluated or not in_service or key in self._busy:
            return
        now = time.monotonic()
        suspended = t.get("SuspendedState") or {}
        if proposals and not suspended.get("DynamicScalingOutSuspended"):
            desired, cause, config = max(proposals, key=lambda x: x[0])
            if now - self._last_out.get(key, -math.inf) >= self._cooldown(config, "ScaleOutCooldown"):
                self._scale(record, desired, cause, out=True)
            return
        if wants_in and all(wants_in) and not suspended.get("DynamicScalingInSuspended"):
            desired, cause, config = max(wants_in, key=lambda x: x[0])
            if now - self._last_any.get(key, -math.inf) >= self._cooldown(config, "ScaleInCooldown"):
                self._scale(record, desired, cause, out=False)

    def _apply_step(self, record: dict, policy: dict, alarm: dict, value: float) -> None:
        """A step scaling policy triggered by its alarm (in ALARM)."""
        key, t = record["name"], record["target"]
        in_service, _, desired = self._running(_of(record))
        if not in_service or desired is None or key in self._busy:
            return
        config = policy["StepScalingPolicyConfiguration"]
        now = time.monotonic()
        if now - self._last_step.get((key, policy["PolicyName"]), -math.inf) < \
                self._cooldown(config, "Cooldown", step_alarms.DEFAULT_STEP_COOLDOWN):
            return
        new = step_alarms.new_capacity(config, desired, value, float(alarm.get("Threshold", 0)))
        if new is None:
            return
        new = max(t["MinCapacity"], min(t["MaxCapacity"], new))
        suspended = t.get("SuspendedState") or {}
        if new == desired or suspended.get("DynamicScalingOutSuspended" if new > desired
                                           else "DynamicScalingInSuspended"):
            return
        self._last_step[(key, policy["PolicyName"])] = now
        self._scale(record, new, f"monitor alarm {alarm['AlarmName']} in state ALARM triggered policy "
                                 f"{policy['PolicyName']}", out=new > desired, step=(key, policy["PolicyName"]))

    def _scale(self, record: dict, desired: int, cause: str, out: bool, step: tuple[str, str] | None = None) -> None:
        """`step`: the step policy that scales; its Cooldown runs from the activity's end."""
        key, t = record["name"], record["target"]
        target = _of(record)
        activity = {
            "ActivityId": str(uuid.uuid4()), "ServiceNamespace": NAMESPACE, "ResourceId": t["ResourceId"],
            "ScalableDimension": t["ScalableDimension"],
            "Description": f"Setting desired {target.unit} count to {desired}.",
            "Cause": cause, "StartTime": time.time(), "StatusCode": "InProgress",
        }
        self._record_activity(activity, key)
        now = time.monotonic()
        self._last_any[key] = now
        if out:
            self._last_out[key] = now
        self._busy.add(key)
        log.info("autoscaling %s: %s (%s)", t["ResourceId"], activity["Description"], cause)

        def done(ok: bool, message: str | None) -> None:
            with self.lock:
                self._busy.discard(key)
                if step is not None and step in self._last_step:
                    self._last_step[step] = time.monotonic()
                activity["EndTime"] = time.time()
                if ok:
                    activity["StatusCode"] = "Successful"
                    activity["StatusMessage"] = (f"Successfully set desired {target.unit} count to {desired}. Change "
                                                 "successfully fulfilled by sagemaker.")
                else:
                    activity["StatusCode"] = "Failed"
                    activity["StatusMessage"] = f"Failed to set desired {target.unit} count to {desired}. {message}"
                self._record_activity(activity, key)

        try:
            if target.component:
                self.components.set_copies(target.component, desired, on_done=done)
            else:
                self.api.update_weights_and_capacities(
                    target.endpoint, [{"VariantName": target.variant, "DesiredInstanceCount": desired}], on_done=done)
        except AwsError as exc:
            done(False, f"{exc.code}: {exc.message}")

    def _record_activity(self, activity: dict, key: str) -> None:
        record = self.ctx.store.get(ACTIVITY_KIND, key) or {"name": key, "activities": []}
        acts = [a for a in record["activities"] if a["ActivityId"] != activity["ActivityId"]]
        acts.append(copy.deepcopy(activity))
        record["activities"] = acts[-MAX_ACTIVITIES:]
        self.ctx.store.put(ACTIVITY_KIND, record)
