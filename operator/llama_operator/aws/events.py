"""SQS intake of SageMaker's EventBridge state-change events.

Long poll, up to 10 messages a batch; a message is deleted once its event was handled (or found
malformed: it would never become well-formed by waiting). A handler error leaves the message in
the queue, so SQS redelivers it after its visibility timeout; at-least-once delivery is why status
updates must be idempotent and ordered (see status.py).

With kopf peering only the active replica receives: a standby (`active()` false) does not poll at
all, so messages stay in the queue for the active one, and it starts polling within
`standby_check_seconds` of becoming active. A replica that is paused while a long poll is in
flight handles none of what that poll brings and deletes none of it: SQS delivers those messages
again after the queue's visibility timeout, to whichever replica is active then.

Intake normalises each event's `detail` to the SageMaker API's spelling (`normalise_detail`), so
the handlers and status/ read an event exactly as they read a Describe*
response through boto3. The documented events (tests/data/sagemaker_events/) differ from it:
EndpointStatus is upper snake case ("IN_SERVICE"), and timestamps are epoch milliseconds, as
numbers in endpoint events (1592411994287.0) and as strings of digits in training job events
("1583831889050"). After intake statuses are CamelCase ("InService") and timestamps are aware UTC
datetimes; a timestamp that cannot be read is dropped (the observation is then ordered without it)
rather than failing the message forever.

"SageMaker Endpoint Deployment State Change" (blue/green and canary progress) is not subscribed:
it carries the same EndpointStatus ("UPDATING") and serving EndpointConfigName as the endpoint
state change, plus per-variant stages (Creating, ActivatingTraffic, Baking, ...) inside one
UPDATING, so no phase starts or ends sooner with it; its LastModifiedTime does not advance with
those stages (the documented example keeps the endpoint's CreationTime there), so it cannot be
ordered against endpoint state changes; and a rollback has no documented signal in it: Degraded is
known when the endpoint is InService again on the old configuration with a FailureReason, which
the endpoint state change reports. Should it reach the queue anyway, the handlers ignore it (its
detail-type is neither of the two above)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, Awaitable, Callable, Mapping

from llama_operator import metrics
from llama_operator.status.endpoint import endpoint_status_name
from llama_operator.kinds import DETAIL_TIME_FIELDS, DETAIL_USER_MAPS, NAME_TAG, NAMESPACE_TAG, UID_TAG
from llama_operator.status.finetune import secondary_status_name, training_job_status_name
from llama_operator.status.values import to_datetime

log = logging.getLogger(__name__)
_STATUS_FIELDS = {"EndpointStatus": endpoint_status_name, "TrainingJobStatus": training_job_status_name,
                  "SecondaryStatus": secondary_status_name}


def normalise_detail(detail: Mapping[str, Any]) -> dict:
    """A copy of an event's `detail` in the API's spelling: statuses CamelCase as DescribeEndpoint /
    DescribeTrainingJob spell them, timestamps (epoch millis or seconds, as numbers or strings,
    ISO-8601 strings, datetimes) aware UTC datetimes as boto3 gives them. Idempotent; values it
    does not know are kept as they are, timestamps it cannot read are left out."""
    return _normalised(detail)


def _normalised(value: Any) -> Any:
    if isinstance(value, Mapping):
        out: dict = {}
        for key, item in value.items():
            if key in DETAIL_USER_MAPS:
                out[key] = item
            elif key in DETAIL_TIME_FIELDS and not isinstance(item, (Mapping, list)):
                try:
                    out[key] = to_datetime(item)
                except (TypeError, ValueError, OverflowError, OSError):
                    log.warning("events queue: ignoring %s %r, which is not a timestamp", key, item)
            elif key in _STATUS_FIELDS:
                out[key] = _STATUS_FIELDS[key](item)
            elif key == "SecondaryStatusTransitions" and isinstance(item, list):
                out[key] = [{**t, "Status": secondary_status_name(t["Status"])} if isinstance(t, Mapping)
                            and "Status" in t else t for t in _normalised(item)]
            else:
                out[key] = _normalised(item)
        return out
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def normalise_event(event: Mapping[str, Any]) -> dict:
    """The event with its detail in the API's spelling (`normalise_detail`); the envelope as is."""
    return {**event, "detail": normalise_detail(event.get("detail") or {})}


def parse_message(body: str) -> dict | None:
    """The EventBridge event in an SQS message body, its detail in the API's spelling
    (`normalise_event`), or None when it is not one.

    Accepts the event itself (EventBridge -> SQS target) and the same wrapped by SNS."""
    try:
        event = json.loads(body)
        if isinstance(event, dict) and "Message" in event and "detail" not in event:
            event = json.loads(event["Message"])
    except (TypeError, ValueError):
        return None
    if not isinstance(event, dict) or not isinstance(event.get("detail"), dict) or "detail-type" not in event:
        return None
    return normalise_event(event)


def owner_of(detail: dict) -> tuple[str, str, str] | None:
    """(namespace, name, uid) from the owner tags an event carries, if any."""
    tags = detail.get("Tags") or {}
    if isinstance(tags, list):
        tags = {t.get("Key"): t.get("Value") for t in tags if isinstance(t, dict)}
    ns, name = tags.get(NAMESPACE_TAG), tags.get(NAME_TAG)
    return (ns, name, tags.get(UID_TAG, "")) if ns and name else None


async def in_daemon_thread(fn, /, **kwargs):
    """Run a blocking call on a daemon thread. A long poll cannot be interrupted; on the default
    executor it would hold up the operator's exit for up to WaitTimeSeconds after SIGTERM."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(setter, value):
        if not future.done():
            setter(value)

    def work():
        try:
            result = fn(**kwargs)
        except BaseException as exc:  # handed to the awaiting task, which decides
            outcome = (future.set_exception, exc)
        else:
            outcome = (future.set_result, result)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: the operator has stopped, nobody waits
            pass

    threading.Thread(target=work, name="sqs-receive", daemon=True).start()
    return await future


class EventConsumer:
    """`active`: whether this replica may take messages now (None: always, as without peering);
    asked before every receive and again when a receive returns."""

    def __init__(self, sqs, queue_url: str, handle: Callable[[dict], Awaitable[None]], *,
                 wait_seconds: int = 20, batch: int = 10, active: Callable[[], bool] | None = None,
                 standby_check_seconds: float = 1.0, receivers: int = 4):
        self.sqs, self.queue_url, self.handle = sqs, queue_url, handle
        self.wait_seconds, self.batch, self.receivers = wait_seconds, batch, receivers
        self.active = active or (lambda: True)
        self.standby_check_seconds = standby_check_seconds
        self.receiving: bool | None = None  # None until the first check

    def _check_active(self) -> bool:
        active = bool(self.active())
        if active != self.receiving:
            if active:
                log.info("events queue: receiving (this replica is active)")
            else:
                log.info("events queue: not receiving while kopf peering has this replica paused (standby)")
            self.receiving = active
            metrics.consuming(active)
        return active

    async def run(self) -> None:
        """Consume until cancelled, `receivers` long polls at a time: one at a time capped intake
        at one batch of 10 per round of Kubernetes writes, and a burst of state changes (a GitOps
        sync of hundreds of jobs) waited in the queue. Order across polls needs no care: status
        writes are ordered by the events' own times (status/), as SQS itself does not order."""
        try:
            await asyncio.gather(*(self._receive_forever() for _ in range(self.receivers)))
        finally:
            if self.receiving:
                metrics.consuming(False)

    async def _receive_forever(self) -> None:
        """Errors are logged and retried after a pause, never raised."""
        pause = 1.0
        while True:
            try:
                if not self._check_active():
                    await asyncio.sleep(self.standby_check_seconds)
                    continue
                await self.poll_once()
                pause = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broken queue must not stop the operator; resync still runs
                log.warning("events queue: %s; retrying in %.0fs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 60.0)

    async def poll_once(self) -> int:
        """One receive; its events handled concurrently across resources and in received order
        within one (status ordering is per resource); what was handled or malformed is deleted in
        one batch call. Serial handling would make the status lag of the last event of a batch
        the sum of all the batch's Kubernetes writes."""
        resp = await in_daemon_thread(self.sqs.receive_message, QueueUrl=self.queue_url,
                                      MaxNumberOfMessages=self.batch, WaitTimeSeconds=self.wait_seconds)
        messages = resp.get("Messages", [])
        if not messages:
            return 0
        if not self._check_active():
            log.info("events queue: leaving %d received message(s) unhandled and undeleted; SQS "
                     "delivers them again after the visibility timeout", len(messages))
            return 0
        done: list[dict] = []
        by_resource: dict[Any, list[tuple[dict, dict]]] = {}
        for msg in messages:
            event = parse_message(msg.get("Body", ""))
            if event is None:
                log.warning("events queue: dropping a message that is not an EventBridge event (id %s)",
                            msg.get("MessageId"))
                done.append(msg)
            else:
                by_resource.setdefault(resource_key(event), []).append((msg, event))
        handled = await asyncio.gather(*(self._handle_in_order(group, done) for group in by_resource.values()))
        await self._delete(done)
        return sum(handled)

    async def _handle_in_order(self, group: list[tuple[dict, dict]], done: list[dict]) -> int:
        handled = 0
        for msg, event in group:
            try:
                await self.handle(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("events queue: handling %s failed (%s); SQS will redeliver it",
                            event.get("detail-type"), exc)
                continue
            handled += 1
            done.append(msg)
        return handled

    async def _delete(self, messages: list[dict]) -> None:
        if not messages:
            return
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        # its own thread, not the shared pool: that one may be full of SageMaker calls waiting in
        # botocore's client-side rate limiter, and the next receive waits for this delete
        resp = await in_daemon_thread(self.sqs.delete_message_batch, QueueUrl=self.queue_url, Entries=entries)
        for failed in resp.get("Failed", []):  # redelivered later; handling is idempotent
            log.warning("events queue: deleting a handled message failed (%s); SQS will redeliver it",
                        failed.get("Code"))


def resource_key(event: Mapping[str, Any]) -> tuple:
    """What orders events: the SageMaker object an event is about."""
    detail = event.get("detail") or {}
    return (event.get("detail-type"), detail.get("TrainingJobName") or detail.get("EndpointName"))
