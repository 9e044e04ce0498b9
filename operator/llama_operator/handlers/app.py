"""What the handlers of both kinds share: clients, the Kubernetes writer, settings, the role
allowlist, the one admission check (`admit`), and the router that hands each SageMaker
state-change event from SQS to the kind that handles its detail-type."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from llama_operator.aws.metrics import LossReader
from llama_operator.aws.training_jobs import TrainingJobGateway
from llama_operator.handlers.kube import KubeWriter
from llama_operator.settings import Settings
from llama_operator.spec import InvalidSpec, validate
from llama_operator.status.endpoint import INVALID_SPEC, ROLE_NOT_ALLOWED

log = logging.getLogger(__name__)


class Refused(Exception):
    """A spec the operator does not send to SageMaker: `reason` (InvalidSpec, RoleNotAllowed) and
    a message that names the field and the fix."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass
class App:
    settings: Settings
    sagemaker: TrainingJobGateway
    s3: object
    kube: KubeWriter = field(default_factory=KubeWriter)
    allowlist: object = None
    # training job name -> (namespace, name), for events that carry no owner tags
    names: dict = field(default_factory=dict)
    loss: LossReader | None = None  # running jobs' train:loss from CloudWatch; made from settings if None
    # detail-type -> the kind's event handler (each kind's register() adds its own)
    routes: dict[str, Callable[[dict], Awaitable[None]]] = field(default_factory=dict)
    endpoint_gateway: object = None  # set by the LlamaEndpoint handlers' register()
    scaling_gateway: object = None   # Application Auto Scaling, likewise
    kubeconfig: str | None = None    # None: in-cluster, then $KUBECONFIG
    tasks: list[asyncio.Task] = field(default_factory=list)  # what startup started and cleanup stops

    def admit(self, model: type, spec: Any, namespace: str):
        """The spec as its pydantic `model`, checked the one way both kinds check it: its own rules,
        then the namespace's role allowlist. Raises Refused."""
        try:
            checked = validate(model, spec)
        except InvalidSpec as exc:
            raise Refused(INVALID_SPEC, f"spec rejected: {exc}") from None
        if self.allowlist is not None:
            denied = self.allowlist.check(namespace, checked.role_arn)
            if denied:
                raise Refused(ROLE_NOT_ALLOWED, denied)
        return checked

    async def on_event(self, event: dict) -> None:
        """The events consumer's handler: one event to the kind that handles its detail-type;
        other detail-types (a rule that sends more than we subscribe to) are left alone."""
        handler = self.routes.get(event.get("detail-type"))
        if handler is None:
            log.debug("no handler for a %r event", event.get("detail-type"))
            return
        await handler(event)
