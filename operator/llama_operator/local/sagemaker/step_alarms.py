"""The CloudWatch alarms that trigger Application Auto Scaling step scaling policies, evaluated by the
local service. The user creates them in moto's CloudWatch (PutMetricAlarm, AlarmActions naming the
policy's ARN), as on AWS; moto keeps but never evaluates them, so the autoscaler's thread reads them
(DescribeAlarms, outside the service's lock, every few seconds) and evaluates each against the metric
the service measures itself: NoCapacityInvocationFailures of one inference component (namespace
AWS/SageMaker, the single dimension InferenceComponentName), one datapoint of value 1 per invocation
refused for lack of a copy. Other metrics are not evaluated (logged once per alarm).

Evaluation follows CloudWatch's rules on the compressed clock (Period x autoscaling period / 60):
every Period, the last EvaluationPeriods datapoints (Statistic Sum and SampleCount: the count;
Maximum, Minimum, Average and percentiles: 1 when there was a failure); a missing datapoint follows
TreatMissingData (missing/ignore: not counted, notBreaching, breaching); ALARM when at least
DatapointsToAlarm (default EvaluationPeriods) breach ComparisonOperator/Threshold, OK when none do but
some datapoints exist, otherwise INSUFFICIENT_DATA (ignore: unchanged). While an alarm is in ALARM
and ActionsEnabled, each evaluation triggers its actions, as CloudWatch re-triggers Auto Scaling
actions every period. The state is written back to moto (SetAlarmState) so DescribeAlarms shows it.
If moto's CloudWatch cannot be reached nothing is evaluated (logged once), and scaling goes on."""

from __future__ import annotations

import itertools
import logging
import math
import time

from llama_operator.local.sagemaker import metrics

log = logging.getLogger(__name__)

NAMESPACE, METRIC, DIMENSION = "AWS/SageMaker", "NoCapacityInvocationFailures", "InferenceComponentName"
_COMPARE = {
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "GreaterThanThreshold": lambda v, t: v > t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


class StepAlarms:
    def __init__(self, region: str, scale: float, failures):
        """`scale`: compressed seconds per AWS second; `failures(component, start, end)`: the
        component's NoCapacityInvocationFailures in [start, end) on time.monotonic."""
        self.region, self.scale, self.failures = region, scale, failures
        self.alarms: list[dict] = []          # DescribeAlarms entries whose AlarmActions name a step policy
        self._client = None
        self._last_refresh = -math.inf
        self._failing = False
        self._warned: set[str] = set()
        self._state: dict[str, str] = {}
        self._last_eval: dict[str, float] = {}
        self._changes: list[tuple[str, str, str]] = []

    # moto's CloudWatch (outside the service's lock) ---------------------------------------------
    def refresh(self, policy_arns: set[str], every: float) -> None:
        if not policy_arns:
            self.alarms = []
            return
        now = time.monotonic()
        if now - self._last_refresh < every:
            return
        self._last_refresh = now
        if not metrics.cloudwatch_configured():
            self._warn("cloudwatch", "step scaling: no local CloudWatch (AWS_ENDPOINT_URL_CLOUDWATCH) to read alarms "
                                     "from; step scaling policies are not triggered")
            return
        try:
            client = self._cloudwatch()
            alarms = []
            for page in client.get_paginator("describe_alarms").paginate(AlarmTypes=["MetricAlarm"]):
                alarms += [a for a in page.get("MetricAlarms", []) if set(a.get("AlarmActions") or []) & policy_arns]
        except Exception as exc:  # noqa: BLE001 - moto down: scaling goes on without alarms
            if not self._failing:
                log.warning("step scaling: reading CloudWatch alarms failed (%s: %s); retrying",
                            type(exc).__name__, exc)
            self._failing = True
            return
        if self._failing:
            log.info("step scaling: reading CloudWatch alarms works again")
        self._failing = False
        self.alarms = alarms

    def push_states(self) -> None:
        changes, self._changes = self._changes, []
        for name, state, reason in changes:
            try:
                self._cloudwatch().set_alarm_state(AlarmName=name, StateValue=state, StateReason=reason)
            except Exception as exc:  # noqa: BLE001 - only what DescribeAlarms shows
                log.debug("step scaling: SetAlarmState %s failed: %s", name, exc)

    def _cloudwatch(self):
        if self._client is None:
            import boto3

            self._client = boto3.client("cloudwatch", region_name=self.region)
        return self._client

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    # evaluation (under the service's lock) ---------------------------------------------------
    def component(self, alarm: dict) -> str | None:
        dims = alarm.get("Dimensions") or []
        if alarm.get("Metrics") or alarm.get("Namespace") != NAMESPACE or alarm.get("MetricName") != METRIC or \
                len(dims) != 1 or dims[0].get("Name") != DIMENSION:
            self._warn(alarm["AlarmName"], f"step scaling: alarm {alarm['AlarmName']} is not evaluated: the local "
                                           f"service evaluates {NAMESPACE} {METRIC} with the one dimension {DIMENSION}")
            return None
        if alarm.get("ComparisonOperator") not in _COMPARE:
            self._warn(alarm["AlarmName"], f"step scaling: alarm {alarm['AlarmName']}: ComparisonOperator "
                                           f"{alarm.get('ComparisonOperator')} is not evaluated locally")
            return None
        return dims[0]["Value"]

    def _value(self, alarm: dict, component: str, start: float, end: float) -> float | None:
        count = self.failures(component, start, end)
        if not count:
            return None  # the metric has no datapoint without a failure
        return float(count) if alarm.get("Statistic") in ("Sum", "SampleCount") else 1.0

    def due(self, now: float | None = None) -> list[tuple[dict, float]]:
        """The alarms evaluated now that are in ALARM with actions enabled, each with the value of
        its latest datapoint (the step adjustment's metric value)."""
        now = time.monotonic() if now is None else now
        out = []
        for alarm in self.alarms:
            component = self.component(alarm)
            if component is None:
                continue
            name = alarm["AlarmName"]
            period = max(float(alarm.get("Period") or 60) * self.scale, 1e-3)
            last = self._last_eval.get(name)
            if last is not None and now - last < period:
                continue
            self._last_eval[name] = now
            n = max(1, int(alarm.get("EvaluationPeriods") or 1))
            m = int(alarm.get("DatapointsToAlarm") or n)
            latest_start = last if last is not None else now - period
            windows = [(latest_start, now)] + [(latest_start - (i + 1) * period, latest_start - i * period)
                                               for i in range(n - 1)]
            values = [self._value(alarm, component, a, b) for a, b in windows]
            threshold, treat = float(alarm.get("Threshold", 0)), alarm.get("TreatMissingData") or "missing"
            breaching = present = 0
            for v in values:
                if v is None:
                    if treat in ("breaching", "notBreaching"):
                        present += 1
                        breaching += treat == "breaching"
                    continue
                present += 1
                breaching += _COMPARE[alarm["ComparisonOperator"]](v, threshold)
            if breaching >= m:
                state = "ALARM"
            elif present:
                state = "OK"
            else:
                state = self._state.get(name, "INSUFFICIENT_DATA") if treat == "ignore" else "INSUFFICIENT_DATA"
            if self._state.get(name) != state:
                self._state[name] = state
                reason = (f"local evaluation: {breaching} of {len(values)} datapoints breaching (threshold "
                          f"{threshold:g}) for {component}")
                self._changes.append((name, state, reason))
            if state == "ALARM" and alarm.get("ActionsEnabled", True):
                out.append((alarm, next((v for v in values if v is not None), threshold)))
        return out

    def for_policy(self, policy_arn: str) -> list[dict]:
        """DescribeScalingPolicies' Alarms of a step policy: the alarms whose actions name it."""
        return [{"AlarmName": a["AlarmName"], "AlarmARN": a["AlarmArn"]} for a in self.alarms
                if policy_arn in (a.get("AlarmActions") or [])]


# ---- step scaling policies (pure) -----------------------------------------------------------------
ADJUSTMENT_TYPES = ("ChangeInCapacity", "PercentChangeInCapacity", "ExactCapacity")
DEFAULT_STEP_COOLDOWN = 300


def check_config(config: dict | None, error) -> dict:
    """StepScalingPolicyConfiguration validated as Application Auto Scaling does (`error(message)`
    builds the exception); a copy."""
    if not config:
        raise error("StepScalingPolicyConfiguration is required for a policy of type StepScaling.")
    config = dict(config)
    if config.get("AdjustmentType") not in ADJUSTMENT_TYPES:
        raise error(f"Invalid AdjustmentType {config.get('AdjustmentType')!r}: it must be one of "
                    f"{', '.join(ADJUSTMENT_TYPES)}.")
    steps = [dict(s) for s in config.get("StepAdjustments") or []]
    if not steps:
        raise error("StepAdjustments must hold at least one step adjustment.")
    for s in steps:
        if s.get("ScalingAdjustment") is None:
            raise error("Each step adjustment needs a ScalingAdjustment.")
        lo, hi = s.get("MetricIntervalLowerBound"), s.get("MetricIntervalUpperBound")
        if lo is None and hi is None:
            raise error("The upper and lower bound of a step adjustment can't both be null.")
        if lo is not None and hi is not None and float(hi) <= float(lo):
            raise error(f"MetricIntervalUpperBound ({hi}) must be greater than MetricIntervalLowerBound ({lo}).")
    if sum(s.get("MetricIntervalLowerBound") is None for s in steps) > 1 or \
            sum(s.get("MetricIntervalUpperBound") is None for s in steps) > 1:
        raise error("At most one step adjustment may have a null lower bound, and at most one a null upper bound.")
    ordered = sorted(steps, key=lambda s: -math.inf if s.get("MetricIntervalLowerBound") is None
                     else float(s["MetricIntervalLowerBound"]))
    for a, b in itertools.pairwise(ordered):
        if a.get("MetricIntervalUpperBound") is None or b.get("MetricIntervalLowerBound") is None or \
                float(a["MetricIntervalUpperBound"]) != float(b["MetricIntervalLowerBound"]):
            raise error("The intervals of the step adjustments must not overlap or leave a gap: each step's "
                        "MetricIntervalUpperBound must be the next step's MetricIntervalLowerBound.")
    if config["AdjustmentType"] == "ExactCapacity" and any(int(s["ScalingAdjustment"]) < 0 for s in steps):
        raise error("With AdjustmentType ExactCapacity a ScalingAdjustment must not be negative.")
    if config.get("MinAdjustmentMagnitude") is not None and config["AdjustmentType"] != "PercentChangeInCapacity":
        raise error("MinAdjustmentMagnitude is valid only with AdjustmentType PercentChangeInCapacity.")
    if config.get("MetricAggregationType") not in (None, "Average", "Minimum", "Maximum"):
        raise error(f"Invalid MetricAggregationType {config['MetricAggregationType']!r}.")
    if config.get("Cooldown") is not None and int(config["Cooldown"]) < 0:
        raise error(f"Invalid Cooldown {config['Cooldown']}: it must not be negative.")
    config["StepAdjustments"] = steps
    return config


def new_capacity(config: dict, capacity: int, value: float, threshold: float) -> int | None:
    """The capacity a step policy asks for when its alarm's metric is `value` (None: no step
    matches the breach)."""
    delta = value - threshold
    step = next((s for s in config["StepAdjustments"]
                 if (s.get("MetricIntervalLowerBound") is None or delta >= float(s["MetricIntervalLowerBound"]))
                 and (s.get("MetricIntervalUpperBound") is None or delta < float(s["MetricIntervalUpperBound"]))), None)
    if step is None:
        return None
    adj = int(step["ScalingAdjustment"])
    kind = config["AdjustmentType"]
    if kind == "ExactCapacity":
        return adj
    if kind == "ChangeInCapacity":
        return capacity + adj
    change = capacity * adj / 100.0
    change = math.copysign(1, change) if 0 < abs(change) < 1 else int(change)
    floor = int(config.get("MinAdjustmentMagnitude") or 0)
    if abs(change) < floor:
        change = math.copysign(floor, adj)
    return capacity + int(change)
