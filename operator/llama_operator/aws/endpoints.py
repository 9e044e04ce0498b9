"""SageMaker calls for LlamaEndpoint: Model, EndpointConfig and Endpoint.

Creates are idempotent by name: the planner names every object deterministically (spec hash for
models and configs), so "already exists" after a restart or a re-apply means "adopt it" — after
checking that its owner tags are ours, so a foreign object with a colliding name is never taken
over. Deletes treat "not found" as done. Throttling and 5xx are retried by the client's retry
mode; what is left comes out as errors.py's `TerminalError` / `RetryableError`."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from botocore.exceptions import ClientError

from llama_operator.aws.errors import RetryableError, SageMakerError, TerminalError, already_exists, classify
from llama_operator.aws.gateway import Gateway, operation_name
from llama_operator.kinds import UID_TAG

__all__ = ["EndpointGateway", "Owned", "RetryableError", "SageMakerError", "TerminalError"]

log = logging.getLogger(__name__)


@dataclass
class Owned:
    """SageMaker objects carrying one resource's owner uid tag."""
    endpoints: list[str]
    endpoint_configs: list[str]
    models: list[str]
    created: dict[str, Any] = field(default_factory=dict)  # name -> CreationTime

    def empty(self) -> bool:
        return not (self.endpoints or self.endpoint_configs or self.models)


class EndpointGateway(Gateway):
    # ownership -----------------------------------------------------------------------------
    def _check_owner(self, what: str, name: str, arn: str, uid: str) -> None:
        owner = self.tags(arn).get(UID_TAG)
        if owner != uid:
            raise TerminalError(
                "NameCollision",
                f"a SageMaker {what} named {name} already exists and belongs to "
                f"{'another resource (uid ' + owner + ')' if owner else 'no LlamaEndpoint'}; "
                "delete it or rename this LlamaEndpoint", f"adopt {what}")

    # create or adopt -----------------------------------------------------------------------
    def ensure_model(self, request: dict, uid: str) -> str:
        """CreateModel, or adopt the same-named model we made before. Returns its ARN."""
        return self._create_or_adopt("model", "create_model", "describe_model", "Model", request, uid)

    def ensure_endpoint_config(self, request: dict, uid: str) -> str:
        return self._create_or_adopt("endpoint configuration", "create_endpoint_config",
                                     "describe_endpoint_config", "EndpointConfig", request, uid)

    def _create_or_adopt(self, what: str, create: str, describe: str, shape: str, request: dict, uid: str) -> str:
        """`create`, or on AlreadyExists adopt the one of that name if we own it; its ARN."""
        name = request[f"{shape}Name"]
        try:
            return self._raw(create, **request)[f"{shape}Arn"]
        except ClientError as exc:
            if not already_exists(exc):
                raise classify(exc, operation_name(create)) from exc
        arn = self._call(describe, **{f"{shape}Name": name})[f"{shape}Arn"]
        self._check_owner(what, name, arn, uid)
        log.info("adopted existing %s %s", what, name)
        return arn

    def ensure_endpoint(self, request: dict, uid: str) -> dict:
        """CreateEndpoint, or adopt the same-named endpoint. Returns DescribeEndpoint's answer."""
        self._create_or_adopt("endpoint", "create_endpoint", "describe_endpoint", "Endpoint", request, uid)
        return self._call("describe_endpoint", EndpointName=request["EndpointName"])

    # inference components --------------------------------------------------------------------
    def ensure_component(self, request: dict, uid: str) -> dict:
        """CreateInferenceComponent, or adopt ours of that name. Returns its description."""
        self._create_or_adopt("inference component", "create_inference_component", "describe_inference_component",
                              "InferenceComponent", request, uid)
        return self._call("describe_inference_component", InferenceComponentName=request["InferenceComponentName"])

    def describe_component(self, name: str) -> dict | None:
        return self._unless_missing("describe_inference_component", InferenceComponentName=name)

    def update_component(self, request: dict) -> None:
        self._call("update_inference_component", **request)

    def update_component_copies(self, request: dict) -> None:
        self._call("update_inference_component_runtime_config", **request)

    def delete_component(self, name: str) -> bool:
        return self._unless_missing("delete_inference_component", InferenceComponentName=name) is not None

    def components_on(self, endpoint: str) -> list[str]:
        """The inference components SageMaker lists on `endpoint` (a deleted endpoint has none)."""
        return sorted(self.component_states(endpoint))

    def component_states(self, endpoint: str) -> dict[str, str]:
        """{name: InferenceComponentStatus} of the components SageMaker lists on `endpoint`."""
        out: dict[str, str] = {}
        kwargs: dict[str, Any] = {"EndpointNameEquals": endpoint, "MaxResults": 100}
        while True:
            resp = self._call("list_inference_components", **kwargs)
            out.update({c["InferenceComponentName"]: c.get("InferenceComponentStatus", "")
                        for c in resp.get("InferenceComponents", [])})
            if not resp.get("NextToken"):
                return out
            kwargs["NextToken"] = resp["NextToken"]

    # endpoint ------------------------------------------------------------------------------
    def describe_endpoint(self, name: str) -> dict | None:
        return self._unless_missing("describe_endpoint", EndpointName=name)

    def config_created(self, name: str) -> dt.datetime | None:
        return (self._unless_missing("describe_endpoint_config", EndpointConfigName=name) or {}).get("CreationTime")

    def model_created(self, name: str) -> dt.datetime | None:
        return (self._unless_missing("describe_model", ModelName=name) or {}).get("CreationTime")

    def update_endpoint(self, request: dict) -> None:
        self._call("update_endpoint", **request)

    def update_capacity(self, request: dict) -> None:
        self._call("update_endpoint_weights_and_capacities", **request)

    # deletes: False when the object was already gone
    def delete_endpoint(self, name: str) -> bool:
        return self._unless_missing("delete_endpoint", EndpointName=name) is not None

    def delete_endpoint_config(self, name: str) -> bool:
        return self._unless_missing("delete_endpoint_config", EndpointConfigName=name) is not None

    def delete_model(self, name: str) -> bool:
        return self._unless_missing("delete_model", ModelName=name) is not None

    def wait_endpoint_gone(self, name: str, timeout: float, interval: float = 1.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.describe_endpoint(name) is None:
                return True
            time.sleep(interval)
        return self.describe_endpoint(name) is None

    # listing by owner ----------------------------------------------------------------------
    def _list(self, operation: str, key: str, name_key: str, arn_key: str, name_contains: str | None
              ) -> Iterable[tuple[str, str, Any]]:
        kwargs: dict[str, Any] = {"MaxResults": 100}
        if name_contains:
            kwargs["NameContains"] = name_contains
        while True:
            resp = self._call(operation, **kwargs)
            for item in resp.get(key, []):
                yield item[name_key], item[arn_key], item.get("CreationTime")
            if not resp.get("NextToken"):
                return
            kwargs["NextToken"] = resp["NextToken"]

    def owned(self, uid: str, *, name_contains: str | None = None) -> Owned:
        """Every endpoint, endpoint config and model tagged with this owner uid. `name_contains`
        narrows the listing (the deterministic names share a prefix) before tags are read."""
        created: dict[str, Any] = {}

        def mine(operation, key, name_key, arn_key):
            out = []
            for name, arn, when in self._list(operation, key, name_key, arn_key, name_contains):
                try:
                    if self.tags(arn).get(UID_TAG) == uid:
                        out.append(name)
                        created[name] = when
                except TerminalError as exc:
                    if exc.code not in ("ResourceNotFound", "ValidationException"):
                        raise  # else: deleted between the listing and the tag read
            return sorted(out)

        return Owned(
            endpoints=mine("list_endpoints", "Endpoints", "EndpointName", "EndpointArn"),
            endpoint_configs=mine("list_endpoint_configs", "EndpointConfigs", "EndpointConfigName",
                                  "EndpointConfigArn"),
            models=mine("list_models", "Models", "ModelName", "ModelArn"),
            created=created,
        )

    def delete_owned(self, uid: str, *, keep: Iterable[str] = (), name_contains: str | None = None,
                     endpoints: bool = False, spare_after: dt.datetime | None = None,
                     grace: dt.timedelta = dt.timedelta(minutes=15)) -> Owned:
        """Delete this owner's configs and models except `keep` (and its endpoints too when
        `endpoints`); returns what was deleted.

        `spare_after`: objects created after this moment and less than `grace` ago are left alone:
        they may belong to an update being prepared right now (its handler has created them but
        not yet recorded the new spec hash in status)."""
        keep = set(keep)
        found = self.owned(uid, name_contains=name_contains)
        if spare_after is not None:
            now = dt.datetime.now(dt.timezone.utc)
            for name, when in found.created.items():
                if isinstance(when, dt.datetime) and when > spare_after and now - when < grace:
                    keep.add(name)
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
