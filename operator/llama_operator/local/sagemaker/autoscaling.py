"""Application Auto Scaling for SageMaker endpoint variants, served by the local SageMaker service
(JSON 1.1, X-Amz-Target "AnyScaleFrontendService.<Operation>", as botocore's
`application-autoscaling` client speaks it), and a scaler that really scales the variants' local
model servers from the invocations it measures.

What is emulated
----------------
* Operations: RegisterScalableTarget, DeregisterScalableTarget, DescribeScalableTargets,
  PutScalingPolicy, DeleteScalingPolicy, DescribeScalingPolicies, DescribeScalingActivities.
* Scope: ServiceNamespace "sagemaker", ScalableDimension "sagemaker:variant:DesiredInstanceCount",
  ResourceId "endpoint/<EndpointName>/variant/<VariantName>". Anything else (other namespaces,
  inference components' DesiredCopyCount, serverless provisioned concurrency) is refused with
  ValidationException saying so, rather than accepted and ignored.
* Rules as AWS applies them: registration needs the endpoint and its variant; a first registration
  needs MinCapacity and MaxCapacity, MinCapacity <= MaxCapacity, and MinCapacity >= 1 for an
  instance variant; registering again is an upsert of min/max/suspension (policies kept);
  PutScalingPolicy is an upsert by PolicyName and needs a registered target
  (ObjectNotFoundException); Deregister removes the target's policies; unknown targets and
  policies are ObjectNotFoundException; DeleteEndpoint deregisters the endpoint's targets;
  UpdateEndpoint refuses to change a scaled variant's instance type or drop it (api.py).
* Policies: TargetTrackingScaling with the predefined metric SageMakerVariantInvocationsPerInstance
  only (StepScaling, PredictiveScaling, customized metrics and other predefined metrics are refused
  with ValidationException). PutScalingPolicy answers the CloudWatch alarms AWS would create:
  "TargetTracking-<ResourceId>-AlarmHigh-<uuid>" and, unless DisableScaleIn, "...-AlarmLow-<uuid>".
* State (targets, policies, activities) is kept with the service's Store, so it survives a restart.

The scaler and how closely it follows AWS
-----------------------------------------
One daemon thread evaluates every policy once per metric period. On AWS the metric is CloudWatch's
InvocationsPerInstance for the variant, in 1-minute periods; here it is the invocations the service
routed to the variant during the period, divided by the variant's running instance count and
normalised to per minute (x 60 / period), so TargetValue means what it means on AWS.
* High alarm: metric > TargetValue for 3 consecutive periods -> scale out to
  ceil(current * metric / TargetValue), at most MaxCapacity. While the alarm stays in ALARM it
  keeps triggering the policy each period, as a CloudWatch alarm with an Auto Scaling action does.
* Low alarm: metric < 90% of TargetValue for 15 consecutive periods -> scale in to
  max(ceil(current * metric / TargetValue), MinCapacity); never with DisableScaleIn.
* Cooldowns: no scale-out within ScaleOutCooldown of the last scale-out; no scale-in within
  ScaleInCooldown of the last scaling of either direction (defaults 300 s each, as AWS).
* Several policies on one target: any policy asking for more capacity wins (the largest); capacity
  is removed only when every policy asks for less.
* SuspendedState DynamicScalingOutSuspended / DynamicScalingInSuspended stop the respective
  direction; ScheduledScalingSuspended is kept and reported (there are no scheduled actions).
* Min/Max clamp: when the current count falls outside new bounds the target is set to the bound at
  once (Cause "minimum capacity was set to N" / "maximum capacity was set to N").
* Every scaling is a scaling activity (InProgress, then Successful, or Failed with StatusMessage)
  and goes through UpdateEndpointWeightsAndCapacities' own path: the endpoint goes Updating ->
  InService with its state-change events, new servers take traffic once they pass /ping, removed
  ones are drained; capacity beyond --max-instances fails the activity with ResourceLimitExceeded's
  message.
* Time compression: `--autoscaling-period SECONDS` (default 60, real time) is the length of one
  metric period; cooldowns are scaled by period/60 too. With `--autoscaling-period 1`, the high
  alarm needs 3 s of load, the low alarm 15 s of quiet, and a 300 s cooldown lasts 5 s.

Where it differs from AWS
-------------------------
* Periods with no invocations count as a datapoint of 0 (idle scales in to MinCapacity). On AWS a
  minute without invocations may publish no datapoint at all, which can leave the low alarm in
  INSUFFICIENT_DATA and the variant un-scaled-in.
* The metric is measured by the service itself, not read from CloudWatch (no alarms exist in moto's
  CloudWatch; their names and ARNs are only reported). Alarm datapoints are evaluated on the
  scaler's tick, not on CloudWatch's minute boundaries, and there is no metric publication delay.
* AWS's target tracking scales in more gradually and may add capacity during a scale-out cooldown
  when the alarm asks for more than the previous activity added; here the rules above are applied
  as stated.
* An endpoint that is not InService (Updating, SystemUpdating) is simply not scaled this period;
  the alarms keep their state and act once it is back.
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

from llama_operator.local.sagemaker import names
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
TARGET_KIND = "scalable-target"         # Store kinds (store.FOLDERS)
ACTIVITY_KIND = "scaling-activities"
SERVICE_ROLE = (f"arn:aws:iam::{names.ACCOUNT}:role/aws-service-role/sagemaker.application-autoscaling."
                "amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint")
HIGH_DATAPOINTS = 3           # consecutive periods above target before scaling out
LOW_DATAPOINTS = 15           # consecutive periods below LOW_FRACTION * target before scaling in
LOW_FRACTION = 0.9
DEFAULT_COOLDOWN = 300
MAX_POLICIES = 50             # per scalable target (AWS's quota)
MAX_RESULTS = 50
MAX_ACTIVITIES = 100          # kept per resource
_RESOURCE = re.compile(r"^endpoint/([^/]+)/variant/([^/]+)$")


def _key(endpoint: str, variant: str) -> str:
    # Endpoint and variant names are [a-zA-Z0-9-]: a dot joins them unambiguously, as a file name.
    return f"{endpoint}.{variant}"


class _Alarms:
    """A policy's alarm state: consecutive periods above / below."""

    def __init__(self):
        self.high = 0
        self.low = 0


class AutoScaling:
    def __init__(self, ctx: Context, api, endpoints, period: float = 60.0):
        self.ctx, self.api, self.endpoints = ctx, api, endpoints
        self.period = float(period)
        self.lock = ctx.store.lock  # one lock with SageMaker's state: api.py calls in while holding it
        self._alarms: dict[tuple[str, str], _Alarms] = {}   # (target key, policy name)
        self._seen: dict[str, int] = {}                      # target key -> invocations counter last read
        self._last_out: dict[str, float] = {}                # target key -> monotonic time of last scale-out
        self._last_any: dict[str, float] = {}                # ... of last scaling of either direction
        self._busy: set[str] = set()                         # targets with an activity in progress
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # the API -------------------------------------------------------------------------------
    def call(self, operation: str, params: dict) -> dict:
        handler = getattr(self, f"op_{operation}", None)
        if handler is None:
            raise UnknownOperation(f"Operation {operation} is not supported by the local Application Auto Scaling "
                                   "service (SageMaker endpoint variants only).")
        return handler(params or {})

    def _check_namespace(self, p: dict) -> None:
        ns = p.get("ServiceNamespace")
        if ns != NAMESPACE:
            raise ValidationError(f"Unsupported service namespace {ns!r}: the local service emulates Application "
                                  f"Auto Scaling for SageMaker endpoint variants only (ServiceNamespace "
                                  f"'{NAMESPACE}').")

    def _check_dimension(self, dimension) -> None:
        if dimension == INFERENCE_COMPONENT_DIMENSION:
            raise ValidationError(f"Scalable dimension {dimension} is not supported here: inference components are "
                                  f"not emulated yet by the local SageMaker service; use {DIMENSION} with "
                                  "ResourceId endpoint/<EndpointName>/variant/<VariantName>.")
        if dimension != DIMENSION:
            raise ValidationError(f"Unsupported scalable dimension {dimension!r} for service namespace "
                                  f"{NAMESPACE}: the local service supports {DIMENSION} only.")

    def _resource(self, p: dict) -> tuple[str, str, str]:
        """(ResourceId, endpoint, variant) of a request naming one target."""
        self._check_namespace(p)
        self._check_dimension(p.get("ScalableDimension"))
        rid = p.get("ResourceId") or ""
        m = _RESOURCE.match(rid)
        if not m:
            raise ValidationError(f"Unsupported resource ID {rid!r} for scalable dimension {DIMENSION}: expected "
                                  "endpoint/<EndpointName>/variant/<VariantName>.")
        return rid, m.group(1), m.group(2)

    def _check_filter(self, p: dict) -> None:
        self._check_namespace(p)
        if p.get("ScalableDimension") is not None:
            self._check_dimension(p["ScalableDimension"])

    def _not_registered(self, rid: str) -> ObjectNotFound:
        return ObjectNotFound(f"No scalable target registered for service namespace: {NAMESPACE}, resource ID: "
                              f"{rid}, scalable dimension: {DIMENSION}")

    def _target(self, endpoint: str, variant: str) -> dict | None:
        return self.ctx.store.get(TARGET_KIND, _key(endpoint, variant))

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

    def op_RegisterScalableTarget(self, p: dict) -> dict:
        rid, endpoint, variant = self._resource(p)
        lo, hi = p.get("MinCapacity"), p.get("MaxCapacity")
        with self.lock:
            record = self.ctx.store.get("endpoint", endpoint)
            status = record["describe"]["EndpointStatus"] if record else None
            if record is None or status == "Deleting":
                raise ValidationError(f"Could not find endpoint \"{names.arn('endpoint', endpoint, self.ctx.region)}\""
                                      f" for scalable target {rid}.")
            if status in ("Creating", "Failed"):
                raise ValidationError(f"Endpoint {endpoint} is {status}: a scalable target can be registered once "
                                      "the endpoint is InService.")
            config = self.ctx.store.get("endpoint-config", record["describe"]["EndpointConfigName"])
            variants = [pv["VariantName"] for pv in (config or {}).get("describe", {}).get("ProductionVariants", [])]
            if variant not in variants:
                raise ValidationError(f"The variant {variant} does not exist in endpoint {endpoint} "
                                      f"(variants: {', '.join(variants) or 'none'}).")
            existing = self._target(endpoint, variant)
            if existing is None and (lo is None or hi is None):
                raise ValidationError("MinCapacity and MaxCapacity are required when registering a new scalable "
                                      "target.")
            target = copy.deepcopy(existing["target"]) if existing else {
                "ServiceNamespace": NAMESPACE, "ResourceId": rid, "ScalableDimension": DIMENSION,
                "RoleARN": p.get("RoleARN") or SERVICE_ROLE, "CreationTime": time.time(),
                "ScalableTargetARN": f"arn:aws:application-autoscaling:{self.ctx.region}:{names.ACCOUNT}:"
                                     f"scalable-target/{uuid.uuid4().hex}",
                "SuspendedState": {"DynamicScalingInSuspended": False, "DynamicScalingOutSuspended": False,
                                   "ScheduledScalingSuspended": False},
            }
            new_lo = int(lo) if lo is not None else target["MinCapacity"]
            new_hi = int(hi) if hi is not None else target["MaxCapacity"]
            if new_lo < 1:
                raise ValidationError(f"Invalid MinCapacity {new_lo} for {rid}: the minimum capacity of a SageMaker "
                                      "endpoint variant must be at least 1 (instance-based variants cannot scale to "
                                      "zero).")
            if new_lo > new_hi:
                raise ValidationError(f"Minimum capacity ({new_lo}) cannot be greater than maximum capacity "
                                      f"({new_hi}).")
            target["MinCapacity"], target["MaxCapacity"] = new_lo, new_hi
            if p.get("RoleARN"):
                target["RoleARN"] = p["RoleARN"]
            for k, v in (p.get("SuspendedState") or {}).items():
                target["SuspendedState"][k] = bool(v)
            out = existing or {"name": _key(endpoint, variant), "policies": []}
            out["target"] = target
            if p.get("Tags"):
                out["tags"] = {**out.get("tags", {}), **p["Tags"]}
            self.ctx.store.put(TARGET_KIND, out)
            self._clamp(_key(endpoint, variant))
        return {"ScalableTargetARN": target["ScalableTargetARN"]}

    def op_DeregisterScalableTarget(self, p: dict) -> dict:
        rid, endpoint, variant = self._resource(p)
        with self.lock:
            if self._target(endpoint, variant) is None:
                raise ObjectNotFound(f"No scalable target found for service namespace: {NAMESPACE}, resource ID: "
                                     f"{rid}, scalable dimension: {DIMENSION}")
            self._forget(_key(endpoint, variant))
        return {}

    def op_DescribeScalableTargets(self, p: dict) -> dict:
        self._check_filter(p)
        ids = self._resource_filter(p, "ResourceIds")
        with self.lock:
            items = [copy.deepcopy(r["target"]) for r in self._records()
                     if ids is None or r["target"]["ResourceId"] in ids]
        return self._page(items, p, "ScalableTargets")

    def op_PutScalingPolicy(self, p: dict) -> dict:
        rid, endpoint, variant = self._resource(p)
        name = p.get("PolicyName") or ""
        with self.lock:
            record = self._target(endpoint, variant)
            if record is None:
                raise self._not_registered(rid)
            existing = next((x for x in record["policies"] if x["PolicyName"] == name), None)
            ptype = p.get("PolicyType") or (existing or {}).get("PolicyType")
            if ptype is None:
                raise ValidationError("PolicyType is required when creating a scaling policy.")
            if ptype != "TargetTrackingScaling" or p.get("StepScalingPolicyConfiguration") \
                    or p.get("PredictiveScalingPolicyConfiguration"):
                raise ValidationError(f"Unsupported policy type {ptype!r}: the local Application Auto Scaling "
                                      "service supports target tracking only (PolicyType TargetTrackingScaling).")
            config = p.get("TargetTrackingScalingPolicyConfiguration")
            if config is None:
                raise ValidationError("TargetTrackingScalingPolicyConfiguration is required for a policy of type "
                                      "TargetTrackingScaling.")
            config = self._check_target_tracking(config)
            if existing is None and len(record["policies"]) >= MAX_POLICIES:
                raise LimitExceeded(f"A scalable target may have at most {MAX_POLICIES} scaling policies.")
            if existing is None:
                policy_id = str(uuid.uuid4())
                existing = {
                    "PolicyARN": f"arn:aws:autoscaling:{self.ctx.region}:{names.ACCOUNT}:scalingPolicy:{policy_id}:"
                                 f"resource/{NAMESPACE}/{rid}:policyName/{name}",
                    "PolicyName": name, "ServiceNamespace": NAMESPACE, "ResourceId": rid,
                    "ScalableDimension": DIMENSION, "CreationTime": time.time(),
                }
                record["policies"].append(existing)
            existing["PolicyType"] = ptype
            existing["TargetTrackingScalingPolicyConfiguration"] = config
            existing["Alarms"] = self._alarm_list(rid, existing.get("Alarms"), bool(config.get("DisableScaleIn")))
            self.ctx.store.put(TARGET_KIND, record)
            self._alarms.pop((record["name"], name), None)
            return {"PolicyARN": existing["PolicyARN"], "Alarms": copy.deepcopy(existing["Alarms"])}

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
    def _check_target_tracking(config: dict) -> dict:
        config = copy.deepcopy(config)
        value = config.get("TargetValue")
        if value is None or not float(value) > 0:
            raise ValidationError(f"Invalid TargetValue {value!r}: it must be a number greater than 0.")
        if config.get("CustomizedMetricSpecification"):
            raise ValidationError(f"CustomizedMetricSpecification is not supported by the local Application Auto "
                                  f"Scaling service: use PredefinedMetricSpecification {METRIC}.")
        metric = (config.get("PredefinedMetricSpecification") or {})
        if not metric:
            raise ValidationError("A target tracking policy needs PredefinedMetricSpecification or "
                                  "CustomizedMetricSpecification.")
        if metric.get("PredefinedMetricType") != METRIC:
            raise ValidationError(f"Unsupported PredefinedMetricType {metric.get('PredefinedMetricType')!r} for "
                                  f"{DIMENSION}: the local service supports {METRIC} only.")
        if metric.get("ResourceLabel"):
            raise ValidationError(f"ResourceLabel is not valid for predefined metric type {METRIC}.")
        for k in ("ScaleInCooldown", "ScaleOutCooldown"):
            if config.get(k) is not None and int(config[k]) < 0:
                raise ValidationError(f"Invalid {k} {config[k]}: it must not be negative.")
        return config

    def op_DeleteScalingPolicy(self, p: dict) -> dict:
        rid, endpoint, variant = self._resource(p)
        name = p.get("PolicyName") or ""
        with self.lock:
            record = self._target(endpoint, variant)
            policies = (record or {}).get("policies", [])
            if not any(x["PolicyName"] == name for x in policies):
                raise ObjectNotFound(f"No scaling policy found for service namespace: {NAMESPACE}, resource ID: "
                                     f"{rid}, scalable dimension: {DIMENSION}, policy name: {name}")
            record["policies"] = [x for x in policies if x["PolicyName"] != name]
            self.ctx.store.put(TARGET_KIND, record)
            self._alarms.pop((record["name"], name), None)
        return {}

    def op_DescribeScalingPolicies(self, p: dict) -> dict:
        self._check_filter(p)
        ids = self._resource_filter(p)
        wanted = set(p["PolicyNames"]) if p.get("PolicyNames") else None
        with self.lock:
            items = [copy.deepcopy(x) for r in self._records() for x in r["policies"]
                     if (ids is None or x["ResourceId"] in ids) and (wanted is None or x["PolicyName"] in wanted)]
        return self._page(items, p, "ScalingPolicies")

    def op_DescribeScalingActivities(self, p: dict) -> dict:
        self._check_filter(p)
        ids = self._resource_filter(p)
        with self.lock:
            items = [copy.deepcopy(a) for r in self.ctx.store.all(ACTIVITY_KIND) for a in r["activities"]
                     if ids is None or a["ResourceId"] in ids]
        items.sort(key=lambda a: a["StartTime"], reverse=True)
        return self._page(items, p, "ScalingActivities")

    # what SageMaker's API asks ----------------------------------------------------------------
    def _records(self) -> list[dict]:
        return sorted(self.ctx.store.all(TARGET_KIND), key=lambda r: r["target"]["CreationTime"])

    def scaled_variants(self, endpoint: str) -> list[str]:
        """The endpoint's variants that are registered scalable targets."""
        with self.lock:
            return [_RESOURCE.match(r["target"]["ResourceId"]).group(2) for r in self._records()
                    if _RESOURCE.match(r["target"]["ResourceId"]).group(1) == endpoint]

    def endpoint_deleted(self, endpoint: str) -> None:
        """DeleteEndpoint: its scalable targets and their policies are deregistered."""
        with self.lock:
            for variant in self.scaled_variants(endpoint):
                self._forget(_key(endpoint, variant))

    def _forget(self, key: str) -> None:
        self.ctx.store.delete(TARGET_KIND, key)
        for k in [k for k in self._alarms if k[0] == key]:
            del self._alarms[k]
        for d in (self._seen, self._last_out, self._last_any):
            d.pop(key, None)

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

    def _run(self) -> None:
        next_tick = time.monotonic() + self.period
        while not self._stop.wait(max(0.0, next_tick - time.monotonic())):
            next_tick += self.period
            try:
                self.tick()
            except Exception:  # one bad evaluation must not stop scaling
                log.exception("autoscaling: evaluation failed")

    def _cooldown(self, config: dict, key: str) -> float:
        return float(config.get(key, DEFAULT_COOLDOWN)) * self.period / 60.0

    def tick(self) -> None:
        """One metric period: a datapoint per target, each policy's alarms, at most one scaling."""
        with self.lock:
            for record in self._records():
                try:
                    self._evaluate(record)
                except AwsError as exc:
                    log.info("autoscaling %s: %s", record["target"]["ResourceId"], exc.message)

    def _running(self, endpoint: str, variant: str) -> tuple[bool, int | None, int | None]:
        """(InService?, current count, desired count) of the variant."""
        record = self.ctx.store.get("endpoint", endpoint)
        if record is None:
            return False, None, None
        d = record["describe"]
        pv = next((pv for pv in d.get("ProductionVariants") or [] if pv["VariantName"] == variant), None)
        if pv is None:
            return False, None, None
        return d["EndpointStatus"] == "InService", pv.get("CurrentInstanceCount"), pv.get("DesiredInstanceCount")

    def _clamp(self, key: str) -> bool:
        """Sets the variant to the target's bound when its count is outside; True when it did."""
        record = self.ctx.store.get(TARGET_KIND, key)
        if record is None or key in self._busy:
            return False
        t = record["target"]
        endpoint, variant = _RESOURCE.match(t["ResourceId"]).groups()
        in_service, _, desired = self._running(endpoint, variant)
        if not in_service or desired is None:
            return False
        if desired < t["MinCapacity"]:
            self._scale(record, t["MinCapacity"], f"minimum capacity was set to {t['MinCapacity']}", out=True)
            return True
        if desired > t["MaxCapacity"]:
            self._scale(record, t["MaxCapacity"], f"maximum capacity was set to {t['MaxCapacity']}", out=False)
            return True
        return False

    def _evaluate(self, record: dict) -> None:
        key, t = record["name"], record["target"]
        endpoint, variant = _RESOURCE.match(t["ResourceId"]).groups()
        if self._clamp(key):
            return
        if not getattr(self.endpoints, "measures_load", False):
            return
        total = self.endpoints.invocations(endpoint, variant)
        previous = self._seen.get(key)
        self._seen[key] = total
        in_service, current, _ = self._running(endpoint, variant)
        if previous is None or not current:
            return  # no datapoint yet (the first period, or nothing runs)
        metric = (total - previous) / current * 60.0 / self.period
        proposals = []  # (desired, cause, is_out) per policy that wants a change
        wants_in = []
        for policy in record["policies"]:
            config = policy["TargetTrackingScalingPolicyConfiguration"]
            target = float(config["TargetValue"])
            alarms = self._alarms.setdefault((key, policy["PolicyName"]), _Alarms())
            alarms.high = alarms.high + 1 if metric > target else 0
            alarms.low = alarms.low + 1 if metric < LOW_FRACTION * target else 0
            high = next((a["AlarmName"] for a in policy["Alarms"] if "-AlarmHigh-" in a["AlarmName"]), "")
            low = next((a["AlarmName"] for a in policy["Alarms"] if "-AlarmLow-" in a["AlarmName"]), "")
            cause = "monitor alarm {} in state ALARM triggered policy " + policy["PolicyName"]
            if alarms.high >= HIGH_DATAPOINTS:
                desired = min(t["MaxCapacity"], math.ceil(current * metric / target))
                if desired > current:
                    proposals.append((desired, cause.format(high), config))
                wants_in.append(False)
            elif alarms.low >= LOW_DATAPOINTS and not config.get("DisableScaleIn"):
                desired = max(t["MinCapacity"], math.ceil(current * metric / target))
                wants_in.append((desired, cause.format(low), config) if desired < current else False)
            else:
                wants_in.append(False)
        if not in_service or key in self._busy:
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

    def _scale(self, record: dict, desired: int, cause: str, out: bool) -> None:
        key, t = record["name"], record["target"]
        endpoint, variant = _RESOURCE.match(t["ResourceId"]).groups()
        activity = {
            "ActivityId": str(uuid.uuid4()), "ServiceNamespace": NAMESPACE, "ResourceId": t["ResourceId"],
            "ScalableDimension": DIMENSION, "Description": f"Setting desired instance count to {desired}.",
            "Cause": cause, "StartTime": time.time(), "StatusCode": "InProgress",
        }
        self._record_activity(activity)
        now = time.monotonic()
        self._last_any[key] = now
        if out:
            self._last_out[key] = now
        self._busy.add(key)
        log.info("autoscaling %s: %s (%s)", t["ResourceId"], activity["Description"], cause)

        def done(ok: bool, message: str | None) -> None:
            with self.lock:
                self._busy.discard(key)
                activity["EndTime"] = time.time()
                if ok:
                    activity["StatusCode"] = "Successful"
                    activity["StatusMessage"] = (f"Successfully set desired instance count to {desired}. Change "
                                                 "successfully fulfilled by sagemaker.")
                else:
                    activity["StatusCode"] = "Failed"
                    activity["StatusMessage"] = f"Failed to set desired instance count to {desired}. {message}"
                self._record_activity(activity)

        try:
            self.api.update_weights_and_capacities(
                endpoint, [{"VariantName": variant, "DesiredInstanceCount": desired}], on_done=done)
        except AwsError as exc:
            done(False, f"{exc.code}: {exc.message}")

    def _record_activity(self, activity: dict) -> None:
        key = activity["ResourceId"].replace("endpoint/", "", 1).replace("/variant/", ".", 1)
        record = self.ctx.store.get(ACTIVITY_KIND, key) or {"name": key, "activities": []}
        acts = [a for a in record["activities"] if a["ActivityId"] != activity["ActivityId"]]
        acts.append(copy.deepcopy(activity))
        record["activities"] = acts[-MAX_ACTIVITIES:]
        self.ctx.store.put(ACTIVITY_KIND, record)
