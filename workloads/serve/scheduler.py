"""Batching policy of the serving engine: which queued requests run, in which slots, and when.

Plain Python (no torch, no model): the engine (batching_engine.py) owns the device state and runs
what this module decides. A slot is a row of the engine's KV cache; a request holds one from
admission until it finishes. Idle, the engine waits for a request, then up to max_wait for the
batch to fill; busy, whatever is already queued joins the running batch in free slots, lowest
first, so a step's rows are a prefix [0, batch) of the cache. All of it runs on the engine's
worker thread, except `put` (any thread)."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from request_params import GenerationParams

# Decode steps run for a bucketed number of rows, so a CUDA graph captured per bucket serves them.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
PREFILL_BUDGET = 8192  # most prompt tokens in one prefill (its mask is tokens x tokens)


@dataclass
class GenerationResult:
    text: str | None
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str          # "eos", "length" or "stop"
    latency_s: float


@dataclass
class Request:
    prompt_ids: list[int]
    params: GenerationParams
    future: Future
    prompt_text: str | None = None
    submitted: float = field(default_factory=time.perf_counter)
    generated: list[int] = field(default_factory=list)
    slot: int = -1
    pos: int = 0                # host mirror of the slot's next cache position


@dataclass
class Call:
    """Work to run on the engine's thread (which owns the GPU state): when it is idle, or with
    `urgent` at the next step boundary, busy or not (for work that is safe with requests in flight,
    such as copying an adapter into a free slot)."""
    fn: Callable[[], Any]
    urgent: bool = False
    ran: bool = False

    def run(self) -> None:
        """Run fn once (an urgent call reaches the worker by two ways; see Scheduler.put)."""
        if not self.ran:
            self.ran = True
            self.fn()


@dataclass
class Step:
    """One decode step: the busy slots, the rows [0, batch) it runs, the attention length it
    reads and whether any row samples."""
    rows: list[tuple[int, Request]]
    batch: int
    length: int
    sampling: bool


def bucket(n: int, n_slots: int) -> int:
    """The smallest batch bucket holding n rows, at most n_slots."""
    return next((x for x in BATCH_BUCKETS if x >= n and x <= n_slots), n_slots)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def prefill_groups(reqs: list[Request], budget: int = PREFILL_BUDGET) -> list[list[Request]]:
    """The requests in order, packed into prefills of at most `budget` prompt tokens (a
    prefill's buffers, and the masked path's tokens x tokens mask, are sized by it)."""
    groups: list[list[Request]] = []
    used = 0
    for r in reqs:
        if not groups or used + len(r.prompt_ids) > budget:
            groups.append([])
            used = 0
        groups[-1].append(r)
        used += len(r.prompt_ids)
    return groups


def record_token(r: Request, tok: int, eos_ids: frozenset[int], tokenizer=None) -> bool:
    """Record one generated token; finish the request (its future gets the result) if it is
    done: end of sequence, max_new_tokens reached, or a stop string in the text. True if finished."""
    p = r.params
    reason = None
    if tok in eos_ids and not p.ignore_eos:
        reason = "eos"
    else:
        r.generated.append(tok)
        if len(r.generated) >= p.max_new_tokens:
            reason = "length"
    text = None
    if p.stop and tokenizer is not None:
        text = tokenizer.decode(r.generated, skip_special_tokens=True)
        hits = [text.find(s) for s in p.stop if s in text]
        if hits:
            text, reason = text[:min(hits)], "stop"
    if reason is None:
        return False
    if text is None and tokenizer is not None:
        text = tokenizer.decode(r.generated, skip_special_tokens=True)
    if text is not None and p.return_full_text and r.prompt_text is not None:
        text = r.prompt_text + text
    r.future.set_result(GenerationResult(text, list(r.generated), len(r.prompt_ids), reason,
                                         time.perf_counter() - r.submitted))
    return True


class Scheduler:
    """The queue (requests, `Call`s and None, which stops the engine) and the slots."""

    def __init__(self, max_batch_size: int, max_wait_ms: float, *, clock: Callable[[], float] = time.perf_counter):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.n_slots = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.clock = clock
        self.queue: queue.Queue[Request | Call | None] = queue.Queue()
        self.slots: list[Request | None] = [None] * self.n_slots
        self.stopping = False
        self.calls: list[Call] = []  # arrived while requests were in flight; they run once idle
        # Urgent calls also come this way, so none waits behind queued requests (a full batch
        # leaves them in the queue); the queue's copy wakes an idle engine.
        self.urgent: queue.SimpleQueue[Call] = queue.SimpleQueue()

    def put(self, item: Request | Call | None) -> None:
        if isinstance(item, Call) and item.urgent:
            self.urgent.put(item)
        self.queue.put(item)

    def run_urgent(self) -> None:
        """Run the urgent calls put so far (between steps, on the engine's thread)."""
        while True:
            try:
                call = self.urgent.get_nowait()
            except queue.Empty:
                return
            call.run()

    def stop(self) -> None:
        self.stopping = True
        self.queue.put(None)

    @property
    def busy(self) -> bool:
        return any(r is not None for r in self.slots)

    def free_slots(self) -> list[int]:
        return [i for i, r in enumerate(self.slots) if r is None]

    def rows(self) -> list[tuple[int, Request]]:
        return [(i, r) for i, r in enumerate(self.slots) if r is not None]

    def bucket(self, n: int) -> int:
        return bucket(n, self.n_slots)

    def admissions(self, idle: bool) -> list[Request] | None:
        """Requests to admit before the next step, or None when the engine is to stop. Urgent
        calls run first, busy or not. Idle (nothing in flight): deferred calls run next, then this
        waits for work."""
        self.run_urgent()
        if not idle:
            return [] if self.stopping else self.take_new(block=False)
        while self.calls:
            self.calls.pop(0).run()
        if self.stopping:
            return None
        return self.take_new(block=True)

    def take_new(self, block: bool) -> list[Request] | None:
        """Requests to admit now, up to the free slots. Urgent calls run first, even with no free
        slot. Blocking (idle): wait for one, then up to max_wait for the batch to fill; a `Call`
        that arrives first runs at once, and None first means stop (returns None). Not blocking
        (busy): whatever is already queued; a non-urgent `Call` among it waits until idle."""
        self.run_urgent()
        free = len(self.free_slots())
        new: list[Request] = []
        if free == 0:
            return new
        deadline = 0.0
        if block:
            first = self.queue.get()
            if first is None:
                return None
            if isinstance(first, Call):
                first.run()  # idle: nothing is in flight (an urgent one that already ran is skipped)
                return new
            new.append(first)
            deadline = self.clock() + self.max_wait_s
        while len(new) < free:
            try:
                if block:
                    left = deadline - self.clock()
                    if left <= 0:
                        break
                    item = self.queue.get(timeout=left)
                else:
                    item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.stopping = True
                break
            if isinstance(item, Call):
                if item.urgent:
                    item.run()  # between steps
                else:
                    self.calls.append(item)
                continue
            new.append(item)
        return new

    def admit(self, new: list[Request]) -> list[Request]:
        """The requests still wanted (a cancelled future drops its request), each given a free
        slot, lowest first. They hold it once `occupy` is called (after their prefill)."""
        new = [r for r in new if r.future.set_running_or_notify_cancel()]
        for r, slot in zip(new, self.free_slots()):
            r.slot = slot
        return new

    def occupy(self, r: Request) -> None:
        self.slots[r.slot] = r

    def holds(self, slot: int, r: Request) -> bool:
        """Whether r still holds the slot (False once it finished and released it)."""
        return self.slots[slot] is r

    def release(self, r: Request) -> None:
        self.slots[r.slot] = None

    def next_step(self, length_bucket: int, max_length: int) -> Step | None:
        """The decode step to run for the busy slots (None: nothing to run). It reads the cache up
        to the longest row's next position, rounded up to length_bucket, at most max_length."""
        rows = self.rows()
        if not rows:
            return None
        need = max(r.pos for _, r in rows) + 1
        return Step(rows, self.bucket(rows[-1][0] + 1), min(round_up(need, length_bucket), max_length),
                    any(r.params.do_sample for _, r in rows))

    def fail_all(self, exc: BaseException) -> None:
        """The engine is dead: every admitted and queued request gets the error."""
        for r in [r for r in self.slots if r is not None]:
            if not r.future.done():
                r.future.set_exception(exc)
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Request) and not item.future.done():
                item.future.set_exception(exc)
