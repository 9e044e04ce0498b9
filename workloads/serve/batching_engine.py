"""Server-side batching for a Llama-family causal LM: plain Python, torch and transformers.

Concurrent requests are queued; a worker thread admits them into a fixed set of slots (rows of a
preallocated KV cache) and runs one decode step for all active slots at a time, so a request that
arrives while others are generating joins at the next step (rolling batch). Each slot keeps its
own positions, so a prompt's result does not depend on what it was batched with: greedy output in
a batch equals the same prompt alone.

Which requests run, in which slots and when is scheduler.py's (plain Python); the model, the cache
and the steps are model_runner.py's. This module joins them: the client side (`submit`) and the
worker thread that runs the scheduler's decisions on the runner."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import replace

import torch
from fused_layers import select_tokens
from lora_adapters import AdapterError, AdapterExistsError, AdapterNotFoundError
from model_runner import LENGTH_BUCKET, ModelRunner
from model_source import adapter_knob_default, knob_default
from request_params import GenerationParams, RequestError, check_adapter
from scheduler import PREFILL_BUDGET, Call, Request, Scheduler, prefill_groups, record_token

log = logging.getLogger("batching_engine")


class BatchingEngine(ModelRunner):
    """`submit()` from any thread; results come back on `concurrent.futures.Future`s."""

    def __init__(self, model, tokenizer=None, *, max_batch_size: int = knob_default("maxBatchSize"),
                 max_wait_ms: float = knob_default("maxWaitMs"), max_len: int | None = None,
                 use_cuda_graphs: bool | None = None, default_max_new_tokens: int = knob_default("maxNewTokens"),
                 compile_step: bool = False, graph_prefill: bool = True, attention: str | None = None,
                 adapters: dict | None = None, max_loras: int | None = None,
                 max_lora_rank: int = adapter_knob_default("maxLoraRank"), lora_targets=None,
                 default_adapter: str | None = None):
        super().__init__(model, max_batch_size, max_len=max_len, use_cuda_graphs=use_cuda_graphs,
                         compile_step=compile_step, graph_prefill=graph_prefill, attention=attention,
                         adapters=adapters, max_loras=max_loras, max_lora_rank=max_lora_rank,
                         lora_targets=lora_targets)
        if default_adapter and default_adapter not in self.adapter_ids:
            raise ValueError(f"default_adapter {default_adapter!r}: not one of the loaded adapters "
                             f"({', '.join(self.adapter_names) or 'none'})")
        # what a request that names no adapter runs with (an endpoint serving one fine-tune's adapter)
        self.default_adapter = default_adapter or ""
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.default_max_new_tokens = default_max_new_tokens
        cfg = model.config
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else cfg.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        self.eos_ids = frozenset(ids)
        self._sched = Scheduler(max_batch_size, max_wait_ms)
        self._retiring: dict[str, Future] = {}  # adapters being removed -> what remove_adapter waits on
        self._thread = threading.Thread(target=self._run, name="batching-engine", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- client side
    def submit(self, prompt: str | None = None, params: GenerationParams | None = None, *,
               input_ids: list[int] | None = None) -> Future:
        """Queue one request. Raises `RequestError` at once for a request that cannot run, so
        it never joins (or breaks) a batch."""
        params = params or GenerationParams(max_new_tokens=self.default_max_new_tokens)
        if params.prompt_adapters:
            raise RequestError("adapters", "one prompt per submit: pass params.for_prompt(i)")
        check_adapter(params.adapter_field, params.adapter, self.adapter_names)
        if params.adapter is None:
            params = replace(params, adapter=self.default_adapter)
        if input_ids is None:
            if self.tokenizer is None:
                raise RequestError("inputs", "this engine has no tokenizer; send input_ids")
            if not isinstance(prompt, str) or not prompt:
                raise RequestError("inputs", "must be a non-empty string")
            input_ids = self.tokenizer(prompt)["input_ids"]
        if not input_ids:
            raise RequestError("inputs", "the prompt encodes to no tokens")
        vocab = self._embed.num_embeddings
        if any(not 0 <= t < vocab for t in input_ids):
            raise RequestError("inputs", f"token ids must be in [0, {vocab})")
        if len(input_ids) > PREFILL_BUDGET:
            raise RequestError("inputs", f"the prompt is {len(input_ids)} tokens; at most {PREFILL_BUDGET} are accepted")
        if len(input_ids) + params.max_new_tokens > self.max_len:
            room = self.max_len - len(input_ids)
            field_name = "inputs" if room < 1 else "parameters.max_new_tokens"
            raise RequestError(field_name, f"prompt ({len(input_ids)} tokens) + max_new_tokens "
                               f"({params.max_new_tokens}) exceeds the model's {self.max_len}-token limit"
                               + (f"; ask for at most {room} new tokens" if room >= 1 else "; shorten the prompt"))
        if self._sched.stopping:
            raise RequestError("engine", "the engine is shutting down", status=503)
        future: Future = Future()
        self._sched.put(Request(list(input_ids), params, future, prompt_text=prompt))
        return future

    def generate(self, prompt: str, params: GenerationParams | None = None, timeout: float | None = None):
        return self.submit(prompt, params).result(timeout)

    @property
    def adapter_names(self) -> list[str]:
        """The LoRA adapters requests may name (parameters.adapter)."""
        return list(self.adapter_ids)

    def add_adapter(self, name: str, path) -> int:
        """Load one more adapter into a free slot (see max_loras): read and checked on the calling
        thread, copied in on the worker thread at the next step boundary, requests in flight or not
        (no running row uses a free slot); returns its index. Raises lora_adapters.AdapterError for
        one the engine refuses (AdapterExistsError: the name is taken, or still being removed)."""
        adapter = self.read_adapter(name, path)

        def install():
            if name in self._retiring:
                raise AdapterExistsError(name, "name", "is still being removed (requests in flight run with it); "
                                                       "add it again once its removal completes")
            return self.install_adapter(adapter)

        return self._on_worker(install)

    def remove_adapter(self, name: str) -> int:
        """Unload an adapter and free its slot; returns the index it had. At the next step boundary
        the name stops being accepted (a request naming it is refused, and one still queued fails
        with a RequestError); requests already running with it finish with its weights, and its
        slot is zeroed and freed once none is left. Returns only then. Raises AdapterNotFoundError
        for a name not loaded; the engine's default_adapter cannot be removed."""
        if name and name == self.default_adapter:
            raise AdapterError(name, "default_adapter", "is what requests naming no adapter run with "
                                                        "(option.default_adapter); it cannot be removed")
        return self._wait(self._on_worker(lambda: self._begin_removal(name)))

    def _begin_removal(self, name: str) -> Future:
        """On the worker thread: take the name out of adapter_ids (its slot stays reserved in the
        bank) and note it; `_retire_unused` zeroes the slot once no running row uses it. A removal
        already under way is joined."""
        if name in self._retiring:
            return self._retiring[name]
        if self.lora_bank is None or name not in self.adapter_ids:
            loaded = ", ".join(self.adapter_ids) or "none"
            raise AdapterNotFoundError(name, "name", f"not loaded (loaded: {loaded})")
        # A new dict: other threads read adapter_ids (adapter_names, submit's check) meanwhile.
        self.adapter_ids = {n: i for n, i in self.adapter_ids.items() if n != name}
        future = self._retiring[name] = Future()
        self._retire_unused()  # nothing running with it: zeroed and freed now
        return future

    def _retire_unused(self) -> None:
        """Between steps: zero and free the slot of every adapter being removed that no admitted
        row runs with any more (rows keep their adapter by name)."""
        if not self._retiring:
            return
        in_use = {r.params.adapter for _, r in self._sched.rows()}
        for name in [n for n in self._retiring if n not in in_use]:
            future = self._retiring.pop(name)
            try:
                future.set_result(self.unload_adapter(name))
            except Exception as err:  # noqa: BLE001 -- reaches the remover; must not kill the worker
                future.set_exception(err)

    def _on_worker(self, fn, urgent: bool = True):
        """Run fn on the worker thread (it owns the device state) at the next step boundary, or
        with urgent=False once nothing is in flight; its result or exception comes back here."""
        if self._sched.stopping:
            raise RequestError("engine", "the engine is shutting down", status=503)
        done: Future = Future()

        def call():
            try:
                done.set_result(fn())
            except Exception as err:  # noqa: BLE001 -- reaches the caller; must not kill the worker
                done.set_exception(err)

        self._sched.put(Call(call, urgent=urgent))
        return self._wait(done)

    def _wait(self, done: Future):
        """done's result; a call queued behind the engine's stop never runs: do not wait forever."""
        while True:
            try:
                return done.result(timeout=1.0)
            except TimeoutError:
                if not self._thread.is_alive() and not done.done():
                    raise RequestError("engine", "the engine stopped", status=503) from None

    def warmup(self, batch_sizes=None, prefill: bool = True) -> int:
        """Capture the decode graphs for these batch sizes at every attention length now, so no
        request waits for a capture later. Call before serving; returns the graphs captured."""
        if not self.use_graphs:
            return 0
        buckets = sorted({self._sched.bucket(n) for n in (batch_sizes or [self.n_slots])})
        before = self.stats["graphs"]
        done = threading.Event()

        def capture():
            self.capture_graphs(buckets, prefill)
            done.set()

        self._sched.put(Call(capture))  # on the worker thread, between steps
        done.wait()
        return self.stats["graphs"] - before

    def close(self, timeout: float = 30.0) -> None:
        self._sched.stop()
        self._thread.join(timeout)

    # ---------------------------------------------------------------- the worker
    def _run(self) -> None:
        try:
            with torch.no_grad():
                self._loop()
        except BaseException as exc:  # the engine is dead: no request may wait forever
            log.exception("batching engine stopped")
            self._sched.stopping = True
            self._sched.fail_all(exc)
            for future in self._retiring.values():
                future.set_exception(exc)

    def _admit(self, new: list[Request]) -> None:
        t0 = time.perf_counter()
        try:
            for group in prefill_groups(self._sched.admit(self._drop_unloaded(new))):
                self._prefill_group(group)
        finally:
            self.stats["admit_s"] += time.perf_counter() - t0

    def _drop_unloaded(self, new: list[Request]) -> list[Request]:
        """Fail the requests whose adapter was removed while they waited: a name with no index
        would otherwise read as index 0 and the request would silently run on the base model."""
        keep = []
        for r in new:
            name = r.params.adapter
            if not name or name in self.adapter_ids:
                keep.append(r)
            elif r.future.set_running_or_notify_cancel():
                loaded = ", ".join(sorted(self.adapter_ids)) or "none"
                r.future.set_exception(RequestError(r.params.adapter_field, f"adapter {name!r} was unregistered "
                                                    f"before this request ran; loaded: {loaded}"))
        return keep

    def _prefill_group(self, reqs: list[Request]) -> None:
        self.stats["prefills"] += 1
        dev = self.device
        slots = torch.tensor([r.slot for r in reqs], device=dev)
        temp = torch.tensor([r.params.temperature for r in reqs], dtype=torch.float32, device=dev)
        top_p = torch.tensor([r.params.top_p for r in reqs], dtype=torch.float32, device=dev)
        sample = torch.tensor([r.params.do_sample for r in reqs], device=dev)
        logits = self._prefill(reqs)
        first = select_tokens(logits, temp, top_p, sample, bool(sample.any()))
        first_host = first.tolist()
        for r, tok in zip(reqs, first_host):
            r.pos = len(r.prompt_ids)
            if self._accept(r, tok):
                continue
            self._sched.occupy(r)
        live = [i for i, r in enumerate(reqs) if self._sched.holds(r.slot, r)]
        if live:
            idx = torch.tensor(live, device=dev)
            s = slots[idx]
            self.tokens[s] = first[idx]
            self.pos[s] = torch.tensor([reqs[i].pos for i in live], device=dev)
            self.active[s] = 1
            self.temperature[s] = temp[idx]
            self.top_p[s] = top_p[idx]
            self.sample[s] = sample[idx]
            self.adapter_idx[s] = torch.tensor([self.adapter_ids.get(reqs[i].params.adapter, 0) for i in live],
                                               device=dev)

    def _accept(self, r: Request, tok: int) -> bool:
        return record_token(r, tok, self.eos_ids, self.tokenizer)

    def _release(self, r: Request) -> None:
        self._sched.release(r)
        self.active[r.slot] = 0
        self.pos[r.slot] = 0
        self.adapter_idx[r.slot] = 0

    def _loop(self) -> None:
        pending = None  # (host buffer, event, rows launched) of the step whose tokens are unread
        flip = 0
        while True:
            new = self._sched.admissions(idle=not self._sched.busy and pending is None)
            if new is None:
                return
            if new:
                self._admit(new)
            step = self._sched.next_step(LENGTH_BUCKET, self.cache_len)
            current = None
            if step is not None:
                b = step.batch
                self._launch_step(b, step.length, step.sampling)
                self.stats["steps"] += 1
                for _, r in step.rows:
                    r.pos += 1
                buf = self._host_tokens[flip]
                flip ^= 1
                buf[:b].copy_(self.next_tokens[:b], non_blocking=True)
                event = torch.cuda.Event() if self.device.type == "cuda" else None
                if event is not None:
                    event.record()
                current = (buf, event, step.rows)
            # Read the previous step's tokens while the GPU runs this one.
            if pending is not None:
                self._consume(pending)
            pending = current
            self._retire_unused()  # rows that finished may have been the last on a removed adapter

    def _consume(self, pending) -> None:
        buf, event, rows = pending
        if event is not None:
            event.synchronize()
        tokens = buf.tolist()
        for slot, r in rows:
            if not self._sched.holds(slot, r):
                continue  # finished at the previous step; this extra token is discarded
            if self._accept(r, tokens[slot]):
                self._release(r)
