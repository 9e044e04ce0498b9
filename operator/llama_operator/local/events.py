"""State-change events in the EventBridge envelope SageMaker emits, delivered to SQS.

EventBridge writes timestamps inside `detail` as epoch milliseconds and `time` as ISO-8601 UTC;
delivery is at-least-once, so a send is retried until SQS accepts it."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from datetime import datetime, timezone

from llama_operator.local.names import ACCOUNT

log = logging.getLogger(__name__)

DETAIL_TYPES = {
    "training-job": "SageMaker Training Job State Change",
    "endpoint": "SageMaker Endpoint State Change",
}
_TIME_FIELDS = {"CreationTime", "LastModifiedTime", "TrainingStartTime", "TrainingEndTime", "StartTime",
                "EndTime", "Timestamp", "ResolutionTime"}


def to_millis(value):
    """Describe* output with every timestamp (epoch seconds) turned into epoch milliseconds."""
    if isinstance(value, dict):
        return {k: (int(round(v * 1000)) if k in _TIME_FIELDS and isinstance(v, (int, float)) else to_millis(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [to_millis(v) for v in value]
    return value


def envelope(kind: str, arn: str, detail: dict, region: str, now: float | None = None) -> dict:
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
        "detail": to_millis(detail),
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
