"""SageMaker calls for LlamaEndpoint: Model, EndpointConfig and Endpoint.

Creates are idempotent by name: the planner names every object deterministically (spec hash for
models and configs), so "already exists" after a restart or a re-apply means "adopt it" — after
checking that its owner tags are ours, so a foreign object with a colliding name is never taken
over. Deletes treat "not found" as done. Throttling and 5xx are retried by the client's retry
mode; what is left is classified for the handler (terminal vs transient)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Iterable

from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

OWNER_UID_TAG = "llamaops.dev/uid"
OWNER_KIND_TAG = "llamaops.dev/kind"

# Codes after which retrying the same request cannot help: the spec or the account must change.
TERMINAL_CODES = {"ValidationException", "ResourceLimitExceeded", "AccessDeniedException", "AccessDenied",
                  "UnrecognizedClientException", "InvalidParameterValue", "IncompleteSignature",
                  "MissingParameter", "InvalidClientTokenId"}


class EndpointApiError(Exception):
    """A SageMaker error with its classification. `terminal`: the same request will fail again."""

    def __init__(self, operation: str, code: str, message: str, terminal: bool):
        super().__init__(f"{operation}: {code}: {message}")
        self.operation, self.code, self.message, self.terminal = operation, code, message, terminal


def _code(exc: ClientError) -> tuple[str, str]:
    err = exc.response.get("Error", {})
    return err.get("Code", "Unknown"), err.get("Message", str(exc))


def _not_found(exc: ClientError) -> bool:
    code, message = _code(exc)
    return code in ("ResourceNotFound", "ValidationException") and (
        "Could not find" in message or "not found" in message.lower() or "does not exist" in message)


def _already_exists(exc: ClientError) -> bool:
    code, message = _code(exc)
    return code in ("ValidationException", "ResourceInUse") and (
        "already existing" in message or "already exists" in message)


def classify(operation: str, exc: ClientError) -> EndpointApiError:
    code, message = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    terminal = code in TERMINAL_CODES or (400 <= status < 500 and code not in (
        "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"))
    return EndpointApiError(operation, code, message, terminal)


@dataclass
class Owned:
    """SageMaker objects carrying one resource's owner uid tag."""
    endpoints: list[str]
    endpoint_configs: list[str]
    models: list[str]

    def empty(self) -> bool:
        return not (self.endpoints or self.endpoint_configs or self.models)


class EndpointGateway:
    def __init__(self, client):
        self.sm = client

    def _call(self, operation: str, **kwargs) -> dict:
        try:
            return getattr(self.sm, operation)(**kwargs)
        except ClientError as exc:
            raise classify(operation, exc) from exc

    # ownership -----------------------------------------------------------------------------
    def tags(self, arn: str) -> dict[str, str]:
        out: dict[str, str] = {}
        kwargs: dict[str, Any] = {"ResourceArn": arn}
        while True:
            resp = self._call("list_tags", **kwargs)
            out.update({t["Key"]: t["Value"] for t in resp.get("Tags", [])})
            if not resp.get("NextToken"):
                return out
            kwargs["NextToken"] = resp["NextToken"]

    def _check_owner(self, what: str, name: str, arn: str, uid: str) -> None:
        owner = self.tags(arn).get(OWNER_UID_TAG)
        if owner != uid:
            raise EndpointApiError(
                f"adopt {what}", "NotOwned",
                f"a SageMaker {what} named {name} already exists and belongs to "
                f"{'another resource (uid ' + owner + ')' if owner else 'no LlamaEndpoint'}; "
                "delete it or rename this LlamaEndpoint", terminal=True)

    # create or adopt -----------------------------------------------------------------------
    def ensure_model(self, request: dict, uid: str) -> str:
        """CreateModel, or adopt the same-named model we made before. Returns its ARN."""
        name = request["ModelName"]
        try:
            return self.sm.create_model(**request)["ModelArn"]
        except ClientError as exc:
            if not _already_exists(exc):
                raise classify("create_model", exc) from exc
        arn = self._call("describe_model", ModelName=name)["ModelArn"]
        self._check_owner("model", name, arn, uid)
        log.info("adopted existing model %s", name)
        return arn

    def ensure_endpoint_config(self, request: dict, uid: str) -> str:
        name = request["EndpointConfigName"]
        try:
            return self.sm.create_endpoint_config(**request)["EndpointConfigArn"]
        except ClientError as exc:
            if not _already_exists(exc):
                raise classify("create_endpoint_config", exc) from exc
        arn = self._call("describe_endpoint_config", EndpointConfigName=name)["EndpointConfigArn"]
        self._check_owner("endpoint configuration", name, arn, uid)
        log.info("adopted existing endpoint configuration %s", name)
        return arn

    def ensure_endpoint(self, request: dict, uid: str) -> dict:
        """CreateEndpoint, or adopt the same-named endpoint. Returns DescribeEndpoint's answer."""
        name = request["EndpointName"]
        try:
            self.sm.create_endpoint(**request)
        except ClientError as exc:
            if not _already_exists(exc):
                raise classify("create_endpoint", exc) from exc
            described = self._call("describe_endpoint", EndpointName=name)
            self._check_owner("endpoint", name, described["EndpointArn"], uid)
            log.info("adopted existing endpoint %s", name)
            return described
        return self._call("describe_endpoint", EndpointName=name)

    # endpoint ------------------------------------------------------------------------------
    def describe_endpoint(self, name: str) -> dict | None:
        try:
            return self.sm.describe_endpoint(EndpointName=name)
        except ClientError as exc:
            if _not_found(exc):
                return None
            raise classify("describe_endpoint", exc) from exc

    def update_endpoint(self, request: dict) -> None:
        self._call("update_endpoint", **request)

    def delete_endpoint(self, name: str) -> bool:
        """DeleteEndpoint; False when it was already gone."""
        try:
            self.sm.delete_endpoint(EndpointName=name)
            return True
        except ClientError as exc:
            if _not_found(exc):
                return False
            raise classify("delete_endpoint", exc) from exc

    def delete_endpoint_config(self, name: str) -> bool:
        try:
            self.sm.delete_endpoint_config(EndpointConfigName=name)
            return True
        except ClientError as exc:
            if _not_found(exc):
                return False
            raise classify("delete_endpoint_config", exc) from exc

    def delete_model(self, name: str) -> bool:
        try:
            self.sm.delete_model(ModelName=name)
            return True
        except ClientError as exc:
            if _not_found(exc):
                return False
            raise classify("delete_model", exc) from exc

    def wait_endpoint_gone(self, name: str, timeout: float, interval: float = 1.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.describe_endpoint(name) is None:
                return True
            time.sleep(interval)
        return self.describe_endpoint(name) is None

    # listing by owner ----------------------------------------------------------------------
    def _list(self, operation: str, key: str, name_key: str, arn_key: str, name_contains: str | None
              ) -> Iterable[tuple[str, str]]:
        kwargs: dict[str, Any] = {"MaxResults": 100}
        if name_contains:
            kwargs["NameContains"] = name_contains
        while True:
            resp = self._call(operation, **kwargs)
            for item in resp.get(key, []):
                yield item[name_key], item[arn_key]
            if not resp.get("NextToken"):
                return
            kwargs["NextToken"] = resp["NextToken"]

    def owned(self, uid: str, *, name_contains: str | None = None) -> Owned:
        """Every endpoint, endpoint config and model tagged with this owner uid. `name_contains`
        narrows the listing (the deterministic names share a prefix) before tags are read."""
        def mine(operation, key, name_key, arn_key):
            out = []
            for name, arn in self._list(operation, key, name_key, arn_key, name_contains):
                try:
                    if self.tags(arn).get(OWNER_UID_TAG) == uid:
                        out.append(name)
                except EndpointApiError as exc:
                    if exc.code not in ("ResourceNotFound", "ValidationException"):
                        raise  # else: deleted between the listing and the tag read
            return sorted(out)

        return Owned(
            endpoints=mine("list_endpoints", "Endpoints", "EndpointName", "EndpointArn"),
            endpoint_configs=mine("list_endpoint_configs", "EndpointConfigs", "EndpointConfigName",
                                  "EndpointConfigArn"),
            models=mine("list_models", "Models", "ModelName", "ModelArn"),
        )

    def delete_owned(self, uid: str, *, keep: Iterable[str] = (), name_contains: str | None = None,
                     endpoints: bool = False) -> Owned:
        """Delete this owner's configs and models except `keep` (and its endpoints too when
        `endpoints`); returns what was deleted."""
        keep = set(keep)
        found = self.owned(uid, name_contains=name_contains)
        done = Owned([], [], [])
        if endpoints:
            for name in found.endpoints:
                if name not in keep and self.delete_endpoint(name):
                    done.endpoints.append(name)
        for name in found.endpoint_configs:
            if name not in keep and self.delete_endpoint_config(name):
                done.endpoint_configs.append(name)
        for name in found.models:
            if name not in keep and self.delete_model(name):
                done.models.append(name)
        return done
