"""Application Auto Scaling calls for a LlamaEndpoint's instance count, blocking (handlers run them
in a thread). Requests come from plan/scaling.py; errors are classified as SageMaker's are
(errors.py), and "not found" (ObjectNotFoundException) on a removal means already removed."""

from __future__ import annotations

from typing import Any

from llama_operator.aws.gateway import Gateway
from llama_operator.plan import scaling as plan


class ScalingGateway(Gateway):
    def apply(self, register: dict, policy: dict) -> None:
        """Register the scalable target, then its policy (both upserts)."""
        self._call("register_scalable_target", **register)
        self._call("put_scaling_policy", **policy)

    def remove(self, endpoint_name: str) -> bool:
        """Delete the policy and deregister the target; False when nothing was registered."""
        self._unless_missing("delete_scaling_policy", **plan.delete_policy_request(endpoint_name))
        return self._unless_missing("deregister_scalable_target", **plan.deregister_request(endpoint_name)) is not None

    def last_activity(self, endpoint_name: str) -> dict[str, Any] | None:
        resp = self._call("describe_scaling_activities", **plan.activities_request(endpoint_name))
        return next(iter(resp.get("ScalingActivities") or []), None)
