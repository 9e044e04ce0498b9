"""State-change events in the EventBridge envelope SageMaker emits, delivered to SQS.

A detail mirrors the resource's Describe* output in the shapes SageMaker's documented example
events show (tests/data/sagemaker_events/, and `detail_for`): endpoint events spell EndpointStatus
in upper snake case ("IN_SERVICE") and write timestamps as epoch milliseconds (numbers); training
job events keep the API's TrainingJobStatus and write timestamps as epoch milliseconds in strings
("1583831889050"). The envelope's `time` is ISO-8601 UTC. The service's Describe* responses keep
the API's spelling: `detail_for` works on a copy. Delivery is at-least-once, so a send is retried
until SQS accepts it."""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from datetime import datetime, timezone

from llama_operator.kinds import DETAIL_TIME_FIELDS, DETAIL_USER_MAPS, ENDPOINT_DETAIL_TYPE, TRAINING_DETAIL_TYPE
from llama_operator.local.sagemaker.names import ACCOUNT

log = logging.getLogger(__name__)

DETAIL_TYPES = {
    "training-job": TRAINING_DETAIL_TYPE,
    "endpoint": ENDPOINT_DETAIL_TYPE,
}


def _upper_snake(value: str) -> str:
    """EndpointStatus as DescribeEndpoint spells it -> as the endpoint state change spells it
    ("UpdateRollbackFailed" -> "UPDATE_ROLLBACK_FAILED")."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", value).upper()


def _millis(value):
    """Epoch seconds (the store's) or a datetime as integral epoch milliseconds; else as given."""
    if isinstance(value, datetime):
        value = value.timestamp() if value.tzinfo else value.replace(tzinfo=timezone.utc).timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(round(value * 1000))
    return value


def _with_times(value, as_string: bool):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in DETAIL_USER_MAPS:
                out[k] = v
            elif k in DETAIL_TIME_FIELDS and not isinstance(v, (dict, list)):
                ms = _millis(v)
                out[k] = str(ms) if as_string and isinstance(ms, int) else ms
            else:
                out[k] = _with_times(v, as_string)
        return out
    if isinstance(value, list):
        return [_with_times(v, as_string) for v in value]
    return value


def to_millis(value):
    """Describe* output with every timestamp (epoch seconds) turned into epoch milliseconds."""
    return _with_times(value, as_string=False)


def detail_for(kind: str, describe: dict) -> dict:
    """The `detail` of `kind`'s state-change event for a Describe* snapshot (epoch-second times),
    shaped as SageMaker's documented examples: endpoint -> EndpointStatus in upper snake case and
    timestamps as epoch-millisecond numbers; training-job -> timestamps as epoch-millisecond
    strings. Pure: `describe` is not changed."""
    if kind == "endpoint":
        detail = _with_times(describe, as_string=False)
        status = detail.get("EndpointStatus")
        if isinstance(status, str):
            detail["EndpointStatus"] = _upper_snake(status)
        return detail
    if kind == "training-job":
        return _with_times(describe, as_string=True)
    return to_millis(describe)


def envelope(kind: str, arn: str, describe: dict, region: str, now: float | None = None) -> dict:
    """The EventBridge event of `kind` for a Describe* snapshot (epoch-second times), its detail
    shaped by `detail_for`."""
    now = time.time() if now is None else now
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": DETAIL_TYPES[kind],
        "source": "aws.sagemaker",
        "account": ACCOUNT,
        "time": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [arn],
        "detail": detail_for(kind, describe),
    }


class EventSink:
    """Sends events in order from one thread, so a consumer sees each object's changes in the
    order they happened."""

    def __init__(self, sqs_client, queue_url: str):
        self._sqs = sqs_client
        self._url = queue_url
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def emit(self, event: dict) -> None:
        self._queue.put(event)

    def flush(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            body = json.dumps(event)
            for attempt in range(30):
                try:
                    self._sqs.send_message(QueueUrl=self._url, MessageBody=body)
                    break
                except Exception as exc:  # keep the event: at-least-once
                    log.warning("event delivery failed (attempt %d): %s", attempt + 1, exc)
                    time.sleep(min(2.0, 0.1 * 2 ** attempt))
            self._queue.task_done()
