"""The batching policy on its own: no model, no torch (scheduler.py is plain Python)."""

import subprocess
import sys
import threading
import time
from concurrent.futures import Future

import pytest
from llama_operator.paths import workloads_dir
from request_params import GenerationParams
from scheduler import PREFILL_BUDGET, Call, Request, Scheduler, bucket, prefill_groups, record_token, round_up


def req(n_tokens=4, **params) -> Request:
    return Request(list(range(1, n_tokens + 1)), GenerationParams(**params), Future())


class FakeClock:
    """Returns the given times in turn, then the last one forever."""

    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


class Letters:
    """A tokenizer stand-in: token i decodes to the i-th letter."""

    @staticmethod
    def decode(ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i - 1) for i in ids)


def test_the_module_loads_neither_torch_nor_a_model():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import scheduler; "
            "loaded = [m for m in ('torch', 'transformers', 'model_runner', 'batching_engine') if m in sys.modules]; "
            "assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code, str(workloads_dir() / "serve")], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_requests_are_admitted_in_arrival_order_into_the_lowest_free_slots():
    s = Scheduler(8, 10)
    reqs = [req() for _ in range(5)]
    for r in reqs:
        s.put(r)
    new = s.admissions(idle=True)
    assert new == reqs
    assert [r.slot for r in s.admit(new)] == [0, 1, 2, 3, 4]


def test_no_more_requests_run_than_the_max_batch_size_and_a_released_slot_is_reused():
    s = Scheduler(4, 0)
    reqs = [req() for _ in range(6)]
    for r in reqs:
        s.put(r)
    first = s.take_new(block=True)
    assert first == reqs[:1]  # max wait 0: the first runs at once
    for r in s.admit(first):
        s.occupy(r)
    joining = s.take_new(block=False)
    assert joining == reqs[1:4]  # the others join the running batch, up to the free slots
    for r in s.admit(joining):
        s.occupy(r)
    assert s.busy and s.free_slots() == []
    assert s.take_new(block=False) == []  # full: the queue keeps them
    s.release(reqs[1])
    assert not s.holds(1, reqs[1]) and s.holds(2, reqs[2])
    (fifth,) = s.admit(s.take_new(block=False))
    assert fifth is reqs[4] and fifth.slot == 1
    s.occupy(fifth)
    assert [r for _, r in s.rows()] == [reqs[0], reqs[4], reqs[2], reqs[3]]


def test_an_idle_engine_waits_up_to_max_wait_for_the_batch_to_fill():
    s = Scheduler(8, 10, clock=FakeClock(0.0, 0.004, 0.011))
    reqs = [req() for _ in range(3)]
    for r in reqs:
        s.put(r)
    # The deadline is 10 ms after the first request: the second comes at 4 ms, the third after it.
    assert s.take_new(block=True) == reqs[:2]
    assert s.take_new(block=False) == reqs[2:]


def test_a_request_arriving_within_max_wait_joins_the_first_batch():
    s = Scheduler(8, 200)
    first, late = req(), req()
    s.put(first)
    threading.Timer(0.03, s.put, args=(late,)).start()
    t0 = time.perf_counter()
    assert s.take_new(block=True) == [first, late]
    assert 0.15 < time.perf_counter() - t0 < 5  # then it waited out max_wait for more


def test_a_full_batch_does_not_wait_and_a_busy_engine_never_waits():
    s = Scheduler(2, 10_000)
    reqs = [req(), req()]
    for r in reqs:
        s.put(r)
    t0 = time.perf_counter()
    assert s.take_new(block=True) == reqs
    assert s.take_new(block=False) == []
    assert time.perf_counter() - t0 < 1


def test_calls_run_when_idle_and_none_stops():
    s = Scheduler(4, 50)
    ran = []
    s.put(Call(lambda: ran.append("first")))
    assert s.admissions(idle=True) == [] and ran == ["first"]  # nothing in flight: it runs at once
    r = req()
    s.put(r)
    s.put(Call(lambda: ran.append("deferred")))
    assert s.take_new(block=True) == [r] and ran == ["first"]  # arrived with a request: kept for later
    s.stop()
    assert s.admissions(idle=False) == []  # stopping: nothing new joins the running batch
    assert s.admissions(idle=True) is None and ran == ["first", "deferred"]
    s2 = Scheduler(4, 50)
    s2.put(None)
    assert s2.take_new(block=True) is None


def test_an_urgent_call_runs_at_the_next_step_boundary_even_with_the_batch_full():
    s = Scheduler(2, 0)
    ran = []
    first, second, queued = req(), req(), req()
    s.put(first)
    s.put(second)
    for block in (True, False):
        for r in s.admit(s.take_new(block=block)):
            s.occupy(r)
    assert s.free_slots() == []
    s.put(queued)
    s.put(Call(lambda: ran.append("deferred")))
    s.put(Call(lambda: ran.append("urgent"), urgent=True))
    assert s.admissions(idle=False) == [] and ran == ["urgent"]  # behind a queued request, no free slot
    s.release(first)
    assert s.take_new(block=False) == [queued] and ran == ["urgent"]  # once, though it was queued too
    s.release(second)
    s.release(queued)
    assert s.admissions(idle=True) == [] and ran == ["urgent", "deferred"]  # the other waited until idle
    # Idle: an urgent call wakes the waiting engine and runs once.
    s2 = Scheduler(2, 0)
    s2.put(Call(lambda: ran.append("woke"), urgent=True))
    assert s2.take_new(block=True) == [] and ran[-1] == "woke"
    s2.put(Call(lambda: ran.append("again"), urgent=True))
    r = req()
    s2.put(r)
    assert s2.take_new(block=True) == [] and ran[-1] == "again"  # its queue copy is skipped
    assert s2.take_new(block=True) == [r] and ran.count("again") == 1


def test_a_cancelled_request_takes_no_slot():
    s = Scheduler(4, 0)
    gone, kept = req(), req()
    gone.future.cancel()
    assert s.admit([gone, kept]) == [kept] and kept.slot == 0 and gone.slot == -1


def test_prefills_are_packed_in_order_up_to_the_token_budget():
    lengths = [3000, 3000, 3000, 100, PREFILL_BUDGET, 1]
    reqs = [req(n) for n in lengths]
    groups = prefill_groups(reqs)
    assert [[len(r.prompt_ids) for r in g] for g in groups] == [[3000, 3000], [3000, 100], [PREFILL_BUDGET], [1]]
    assert [r for g in groups for r in g] == reqs
    assert prefill_groups([]) == []
    assert [[len(r.prompt_ids) for r in g] for g in prefill_groups([req(3), req(3), req(3)], budget=6)] == [[3, 3], [3]]


@pytest.mark.parametrize("n, n_slots, expected", [
    (1, 32, 1), (3, 32, 4), (8, 32, 8), (17, 32, 24), (33, 256, 48), (5, 6, 6), (7, 7, 7), (200, 256, 256),
])
def test_batch_buckets(n, n_slots, expected):
    assert bucket(n, n_slots) == expected
    assert Scheduler(n_slots, 0).bucket(n) == expected


def test_the_next_step_covers_every_busy_slot_at_a_bucketed_length():
    s = Scheduler(16, 0)
    assert s.next_step(128, 1024) is None
    a, b = req(), req(do_sample=True, temperature=1.0)
    a.slot, a.pos = 0, 100
    b.slot, b.pos = 5, 300
    s.occupy(a)
    s.occupy(b)
    step = s.next_step(128, 1024)
    assert (step.rows, step.batch, step.length, step.sampling) == ([(0, a), (5, b)], 8, 384, True)
    assert s.next_step(128, 256).length == 256  # never past the cache
    s.release(b)
    step = s.next_step(128, 1024)
    assert (step.batch, step.length, step.sampling) == (1, 128, False)
    assert round_up(129, 128) == 256 and round_up(128, 128) == 128


def test_record_token_finishes_at_eos_length_or_stop():
    eos = frozenset({99})
    r = req(2, max_new_tokens=3)
    assert not record_token(r, 1, eos) and not record_token(r, 2, eos)
    assert record_token(r, 3, eos)
    assert (r.future.result().token_ids, r.future.result().finish_reason) == ([1, 2, 3], "length")
    r = req(2, max_new_tokens=5)
    assert record_token(r, 99, eos, Letters)
    assert (r.future.result().token_ids, r.future.result().text, r.future.result().finish_reason) == ([], "", "eos")
    r = req(2, max_new_tokens=5, ignore_eos=True)
    assert not record_token(r, 99, eos) and r.generated == [99]
    r = req(2, max_new_tokens=9, stop=("cd",), return_full_text=True)
    r.prompt_text = "> "
    assert not any(record_token(r, t, eos, Letters) for t in (1, 2, 3))
    assert record_token(r, 4, eos, Letters)
    result = r.future.result()
    assert (result.text, result.finish_reason, result.prompt_tokens) == ("> ab", "stop", 2)


def test_fail_all_answers_admitted_and_queued_requests():
    s = Scheduler(2, 0)
    running, queued = req(), req()
    s.put(running)
    (running,) = s.admit(s.take_new(block=True))
    s.occupy(running)
    s.put(queued)
    s.put(Call(lambda: None))
    err = RuntimeError("engine died")
    s.fail_all(err)
    assert running.future.exception() is err and queued.future.exception() is err


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="max_batch_size must be >= 1, got 0"):
        Scheduler(0, 10)
