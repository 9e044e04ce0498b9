"""What the handlers of both kinds share: clients, the Kubernetes writer, settings, the role
allowlist, and the router that hands each SageMaker state-change event from SQS to the kind that
handles its detail-type."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from llama_operator.aws.metrics import LossReader
from llama_operator.aws.sagemaker import SageMakerGateway
from llama_operator.handlers.kube import KubeWriter
from llama_operator.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class App:
    settings: Settings
    sagemaker: SageMakerGateway
    s3: object
    kube: KubeWriter = field(default_factory=KubeWriter)
    allowlist: object = None
    # training job name -> (namespace, name), for events that carry no owner tags
    names: dict = field(default_factory=dict)
    loss: LossReader | None = None  # running jobs' train:loss from CloudWatch; made from settings if None
    # detail-type -> the kind's event handler (each kind's register() adds its own)
    routes: dict[str, Callable[[dict], Awaitable[None]]] = field(default_factory=dict)
    endpoint_gateway: object = None  # set by the LlamaEndpoint handlers' register()

    async def on_event(self, event: dict) -> None:
        """The events consumer's handler: one event to the kind that handles its detail-type;
        other detail-types (a rule that sends more than we subscribe to) are left alone."""
        handler = self.routes.get(event.get("detail-type"))
        if handler is None:
            log.debug("no handler for a %r event", event.get("detail-type"))
            return
        await handler(event)
