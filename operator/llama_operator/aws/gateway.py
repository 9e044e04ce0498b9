"""What both kinds' SageMaker gateways share: every call counted by operation and outcome (the
operator's metrics), errors classified (errors.py), and a resource's tags read whole."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from llama_operator.aws.errors import classify, code_and_message, not_found


def operation_name(method: str) -> str:
    """boto3's method name as the API's operation ("describe_endpoint" -> "DescribeEndpoint")."""
    return "".join(part.capitalize() for part in method.split("_"))


class Gateway:
    def __init__(self, client, *, on_call=None):
        self.client = client
        self._on_call = on_call or (lambda operation, outcome: None)

    def _raw(self, method: str, **kwargs) -> dict:
        """The call, counted; a ClientError passes through for the caller to interpret (not
        found, already exists), anything else from botocore is classified."""
        try:
            out = getattr(self.client, method)(**kwargs)
        except ClientError as exc:
            self._on_call(operation_name(method), code_and_message(exc)[0])
            raise
        except BotoCoreError as exc:
            self._on_call(operation_name(method), type(exc).__name__)
            raise classify(exc, operation_name(method)) from exc
        self._on_call(operation_name(method), "ok")
        return out

    def _call(self, method: str, **kwargs) -> dict:
        try:
            return self._raw(method, **kwargs)
        except ClientError as exc:
            raise classify(exc, operation_name(method)) from exc

    def _unless_missing(self, method: str, **kwargs) -> dict | None:
        """The call's answer, or None when SageMaker says the object does not exist."""
        try:
            return self._raw(method, **kwargs)
        except ClientError as exc:
            if not_found(exc):
                return None
            raise classify(exc, operation_name(method)) from exc

    def tags(self, arn: str) -> dict[str, str]:
        out: dict[str, str] = {}
        kwargs: dict[str, Any] = {"ResourceArn": arn}
        while True:
            resp = self._call("list_tags", **kwargs)
            out.update({t["Key"]: t.get("Value", "") for t in resp.get("Tags", [])})
            if not resp.get("NextToken"):
                return out
            kwargs["NextToken"] = resp["NextToken"]
