"""The SQS consumer receives only while kopf peering lets this replica work (see
tests/e2e/test_peering.py for two real replicas)."""

import asyncio
import json
import threading

import kopf
from kopf._cogs.aiokits import aiotasks, aiotoggles

from llama_operator import metrics
from llama_operator.aws.events import EventConsumer
from llama_operator.handlers.lifecycle import peering_active

EVENT = json.dumps({"detail-type": "SageMaker Training Job State Change", "detail": {"TrainingJobName": "j"}})


class FakeSQS:
    """receive_message hands out what was put, once; `hold` keeps a receive in flight."""

    def __init__(self):
        self.receives, self.deleted = 0, []
        self.waiting: list[dict] = []
        self.hold: threading.Event | None = None
        self.in_flight = threading.Event()

    def put(self, n: int) -> None:
        self.waiting += [{"MessageId": f"m{len(self.waiting) + i}", "Body": EVENT,
                          "ReceiptHandle": f"r{len(self.waiting) + i}"} for i in range(n)]

    def receive_message(self, **_):
        self.receives += 1
        self.in_flight.set()
        if self.hold is not None:
            self.hold.wait(10)
        got, self.waiting = self.waiting, []
        return {"Messages": got}

    def delete_message_batch(self, Entries, **_):
        self.deleted += [e["ReceiptHandle"] for e in Entries]
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}


def consuming() -> float:
    return metrics.REGISTRY.get_sample_value("llama_operator_events_consuming")


async def wait_until(fn, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not fn():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def start_consumer(sqs, state: dict, receivers: int = 4) -> tuple[asyncio.Task, list]:
    """A consumer of `sqs` that is active while state["active"]; (its task, the events it handled)."""
    handled = []

    async def handle(event):
        handled.append(event)

    consumer = EventConsumer(sqs, "q", handle, wait_seconds=0, active=lambda: state["active"],
                             standby_check_seconds=0.05, receivers=receivers)
    return asyncio.create_task(consumer.run()), handled


async def test_a_standby_does_not_receive_and_starts_once_active():
    sqs, state = FakeSQS(), {"active": False}
    sqs.put(2)
    task, handled = start_consumer(sqs, state)
    try:
        await asyncio.sleep(0.3)
        assert sqs.receives == 0 and handled == [] and sqs.deleted == []  # the messages stay queued
        assert consuming() == 0
        state["active"] = True
        await wait_until(lambda: len(sqs.deleted) == 2, timeout=1)
        assert len(handled) == 2 and consuming() == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert consuming() == 0


async def test_messages_of_a_poll_in_flight_when_paused_are_neither_handled_nor_deleted():
    sqs, state = FakeSQS(), {"active": True}
    sqs.hold = threading.Event()
    task, handled = start_consumer(sqs, state, receivers=1)
    try:
        await asyncio.to_thread(sqs.in_flight.wait, 5)
        sqs.put(3)
        state["active"] = False  # kopf paused this replica during the long poll
        sqs.hold.set()
        await asyncio.sleep(0.3)
        assert handled == [] and sqs.deleted == [] and sqs.receives == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _kopf_like(settings, paused):
    """kopf's arrangement: its orchestrator coroutine, holding both, in a guarded task."""
    async def orchestrator(*, settings, operator_paused):
        await asyncio.sleep(60)

    return aiotasks.create_guarded_task(name="multidimensional multitasker", flag=asyncio.Event(),
                                        coro=orchestrator(settings=settings, operator_paused=paused))


async def test_peering_active_follows_kopfs_pause_toggles():
    settings = kopf.OperatorSettings()
    settings.peering.standalone, settings.peering.mandatory = False, True
    paused = aiotoggles.ToggleSet(any)
    task = await _kopf_like(settings, paused)
    await asyncio.sleep(0)
    try:
        active = peering_active(settings)
        assert active is not None
        assert not active()  # kopf has not started its peering yet
        await paused.make_toggle(False, name="peering CRD is missing")
        assert not active()  # nor looked at the cluster
        conflicts = await paused.make_toggle(True, name="llama-operator@None")
        assert not active()  # peering starts paused
        await conflicts.turn_to(False)
        assert active()  # no peer above this one: the leader
        await conflicts.turn_to(True)
        assert not active()  # a peer of higher priority appeared
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_standalone_or_an_unknown_kopf_consumes_as_always():
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    assert peering_active(settings) is None
    settings.peering.standalone = False  # peering, but no kopf pause state in this loop
    assert peering_active(settings) is None
