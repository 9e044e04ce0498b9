"""One SQS batch: events of different resources are handled at once, events of one resource in
the order received, and only what was handled (or can never be) is deleted."""

import asyncio
import json
import threading

from llama_operator.aws.events import EventConsumer

TRAINING = "SageMaker Training Job State Change"


def message(i: int, job: str, status: str) -> dict:
    body = {"detail-type": TRAINING, "detail": {"TrainingJobName": job, "TrainingJobStatus": status}}
    return {"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": json.dumps(body)}


class OneBatchSQS:
    def __init__(self, messages):
        self.messages, self.deleted, self.delete_calls = messages, [], 0

    def receive_message(self, **_):
        got, self.messages = self.messages, []
        return {"Messages": got}

    def delete_message_batch(self, Entries, **_):
        self.delete_calls += 1
        self.deleted += [e["ReceiptHandle"] for e in Entries]
        return {"Successful": [{"Id": e["Id"]} for e in Entries], "Failed": []}


async def test_resources_concurrently_each_in_order_and_failures_stay_queued():
    sqs = OneBatchSQS([message(0, "a", "InProgress"), message(1, "b", "InProgress"),
                       message(2, "a", "Completed"), {"MessageId": "junk", "ReceiptHandle": "rj", "Body": "{"},
                       message(3, "c", "Failed")])
    seen, b_started = [], asyncio.Event()

    async def handle(event):
        job, status = event["detail"]["TrainingJobName"], event["detail"]["TrainingJobStatus"]
        if job == "a" and status == "InProgress":
            # blocks until b's handler has run: only possible if b does not wait behind a
            await asyncio.wait_for(b_started.wait(), 2)
        if job == "b":
            b_started.set()
        if job == "c":
            raise RuntimeError("the API server is away")
        seen.append((job, status))

    consumer = EventConsumer(sqs, "q", handle, wait_seconds=0)
    assert await consumer.poll_once() == 3
    assert seen.index(("a", "InProgress")) < seen.index(("a", "Completed"))
    assert seen[0] == ("b", "InProgress")
    assert sorted(sqs.deleted) == ["r0", "r1", "r2", "rj"]  # r3 is redelivered after its visibility timeout
    assert sqs.delete_calls == 1


async def test_several_long_polls_are_in_flight_at_once():
    """A burst is taken by several receives at a time, not one batch of 10 after another."""
    class SlowSQS(OneBatchSQS):
        def __init__(self):
            super().__init__([])
            self.lock, self.in_flight, self.most = threading.Lock(), 0, 0

        def receive_message(self, **_):
            with self.lock:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
            threading.Event().wait(0.2)  # a long poll
            with self.lock:
                self.in_flight -= 1
            return {"Messages": []}

    async def handle(event):
        pass

    sqs = SlowSQS()
    task = asyncio.create_task(EventConsumer(sqs, "q", handle, wait_seconds=0, receivers=3).run())
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sqs.most == 3
