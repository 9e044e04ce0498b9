import asyncio
import threading

import pytest

from llama_operator.aws.events import in_daemon_thread


async def test_result_and_error_come_back_from_a_daemon_thread():
    seen = {}

    def call(**kwargs):
        seen["daemon"] = threading.current_thread().daemon
        return kwargs

    assert await in_daemon_thread(call, QueueUrl="q", WaitTimeSeconds=1) == {"QueueUrl": "q", "WaitTimeSeconds": 1}
    assert seen["daemon"]  # a blocked long poll never holds up the interpreter's exit

    def boom():
        raise ValueError("queue does not exist")

    with pytest.raises(ValueError, match="queue does not exist"):
        await in_daemon_thread(boom)


async def test_cancelling_the_waiter_does_not_wait_for_the_call():
    release = threading.Event()
    task = asyncio.create_task(in_daemon_thread(lambda: release.wait(30)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
