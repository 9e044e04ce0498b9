"""Application Auto Scaling calls for a LlamaEndpoint's instance count, blocking (handlers run them
in a thread). Requests come from plan/scaling.py; errors are classified as SageMaker's are
(errors.py), and "not found" on a removal means already removed."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from llama_operator.aws.errors import classify, code_and_message
from llama_operator.aws.gateway import Gateway, operation_name
from llama_operator.plan import scaling as plan


class ScalingGateway(Gateway):
    def apply(self, register: dict, policy: dict) -> None:
        """Register the scalable target, then its policy (both upserts)."""
        self._call("register_scalable_target", **register)
        self._call("put_scaling_policy", **policy)

    def remove(self, endpoint_name: str) -> bool:
        """Delete the policy and deregister the target; False when nothing was registered."""
        self._unless_gone("delete_scaling_policy", **plan.delete_policy_request(endpoint_name))
        return self._unless_gone("deregister_scalable_target", **plan.deregister_request(endpoint_name))

    def registered(self, endpoint_name: str) -> dict | None:
        """The scalable target of the endpoint's variant, or None."""
        resp = self._call("describe_scalable_targets", ServiceNamespace=plan.NAMESPACE,
                          ResourceIds=[plan.resource_id(endpoint_name)], ScalableDimension=plan.DIMENSION)
        return next(iter(resp.get("ScalableTargets") or []), None)

    def last_activity(self, endpoint_name: str) -> dict[str, Any] | None:
        resp = self._call("describe_scaling_activities", **plan.activities_request(endpoint_name))
        return next(iter(resp.get("ScalingActivities") or []), None)

    def _unless_gone(self, method: str, **kwargs) -> bool:
        try:
            self._raw(method, **kwargs)
            return True
        except ClientError as exc:
            if code_and_message(exc)[0] == "ObjectNotFoundException":
                return False
            raise classify(exc, operation_name(method)) from exc
