"""Application Auto Scaling (and CloudWatch alarm) calls for a LlamaEndpoint, blocking (handlers
run them in a thread). Requests come from plan/scaling.py; errors are classified as SageMaker's
are (errors.py), and "not found" (ObjectNotFoundException) on a removal means already removed."""

from __future__ import annotations

from typing import Any

from llama_operator.aws.gateway import Gateway
from llama_operator.plan import scaling as plan


class ScalingGateway(Gateway):
    def __init__(self, client, *, cloudwatch=None, on_call=None):
        super().__init__(client, on_call=on_call)
        self.cloudwatch = Gateway(cloudwatch, on_call=on_call) if cloudwatch is not None else None

    def apply(self, requests: plan.ScalingRequests) -> None:
        """Register the scalable target, then its policies (upserts), then the wake-up alarm on
        the last policy; what a scale-to-zero left behind goes when it is undone."""
        self._call("register_scalable_target", **requests.register)
        arn = None
        for policy in requests.policies:
            arn = self._call("put_scaling_policy", **policy)["PolicyARN"]
        for name in requests.stale_policies:
            self._unless_missing("delete_scaling_policy", **plan.target_of(requests.resource_id), PolicyName=name)
        if requests.alarm is not None:
            self._alarms()._call("put_metric_alarm", **requests.alarm, AlarmActions=[arn])
        elif requests.stale_alarm and self.cloudwatch is not None:
            self.cloudwatch._call("delete_alarms", AlarmNames=[requests.stale_alarm])

    def remove(self, rid: str) -> bool:
        """Delete the policies, the target and its wake-up alarm; False when nothing was registered."""
        for request in plan.policy_removals(rid):
            self._unless_missing("delete_scaling_policy", **request)
        registered = self._unless_missing("deregister_scalable_target", **plan.target_of(rid)) is not None
        alarm = plan.wake_alarm_name(rid)
        if alarm:
            self._alarms()._call("delete_alarms", AlarmNames=[alarm])  # no error for an absent alarm
        return registered

    def last_activity(self, rid: str) -> dict[str, Any] | None:
        resp = self._call("describe_scaling_activities", **plan.activities_request(rid))
        return next(iter(resp.get("ScalingActivities") or []), None)

    def _alarms(self) -> Gateway:
        if self.cloudwatch is None:
            raise RuntimeError("scale to zero needs a CloudWatch client (ScalingGateway(cloudwatch=...))")
        return self.cloudwatch
