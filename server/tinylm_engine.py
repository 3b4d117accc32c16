"""Continuous (iteration-level) batching of `tiny-lm` generations.

One generation loop on its own thread. Each iteration it:
1. drops cancelled sequences and admits waiting ones, oldest first, while a
   sequence slot is free and the KV budget holds the newcomer's whole length
   (prompt + max_tokens, reserved up front, so a running sequence never runs
   out of cache); each admitted sequence is prefilled alone and yields its
   first token;
2. runs one decode step over every running sequence at once (one token each);
3. hands the step's events to the server's loop in one call.
A finished sequence leaves the batch at once, and its slot and KV reservation
go to the next waiting request at the next iteration. Requests beyond the
waiting bound are refused at submission (QueueFull: RESOURCE_EXHAUSTED / 429).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch

from server import tinylm
from server.errors import ExecutionFailed
from server.generation import Event, Generation, GenerationEngine, Sink

log = logging.getLogger("modelsoak.tinylm")


@dataclass
class _Seq:
    gen: Generation
    slot: int
    reserved: int
    length: int  # tokens in the cache
    last: int  # the token to feed next
    rng: torch.Generator


class TinyLMEngine(GenerationEngine):
    def __init__(
        self, name: str, model: tinylm.TinyLM, max_tokens: int, max_sequences: int,
        max_kv_tokens: int, max_waiting: int, threads: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name, max_tokens, max_waiting)
        self.model = model
        self.max_context = model.context
        self.max_sequences = max_sequences
        self.max_kv_tokens = max_kv_tokens
        self.threads = threads
        self._waiting: deque[Generation] = deque()
        self._running: list[_Seq] = []
        self._free = list(range(max_sequences))
        self._reserved = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._out: list[tuple[Sink, Event]] = []
        self._cache = model.new_cache(max_sequences)
        self._thread: threading.Thread | None = None

    # -- the engine interface (on the loop) ---------------------------------------

    def start(self) -> None:
        super().start()
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-generate", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def tokens_of(self, text: bytes) -> int:
        return len(tinylm.encode(text))

    def running(self) -> int:
        return len(self._running)

    def waiting(self) -> int:
        return len(self._waiting)

    def kv_tokens(self) -> tuple[int, int]:
        return sum(s.length for s in list(self._running)), self.max_kv_tokens

    def _enqueue(self, gen: Generation) -> None:
        # Events are made on the generation thread and delivered on the loop in batches.
        deliver = gen.sink
        gen.sink = lambda event: self._out.append((deliver, event))
        with self._cond:
            self._waiting.append(gen)
            self._cond.notify()

    # -- the generation loop (its own thread) -------------------------------------

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopped and not self._waiting and not self._running:
                        self._cond.wait()
                    if self._stopped:
                        return
                try:
                    self._iteration()
                except Exception as exc:  # a failed step ends its sequences, not the server
                    log.exception("generation step of %s failed", self.name)
                    self._fail_all(ExecutionFailed(f"model '{self.name}': generation failed: {exc}"))
                self._flush()

    def _iteration(self) -> None:
        self._drop_cancelled()
        for seq in self._admit():
            self._prefill(seq)
        ready = [s for s in self._running if s.length > 0]
        if ready:
            self._decode(ready)

    def _drop_cancelled(self) -> None:
        now = time.perf_counter_ns()
        for seq in [s for s in self._running if s.gen.cancelled]:
            seq.gen.finish("cancelled", now)
            self._leave(seq)
        with self._cond:
            gone = [g for g in self._waiting if g.cancelled]
            for g in gone:
                self._waiting.remove(g)
        for g in gone:
            g.finish("cancelled", now)

    def _admit(self) -> list[_Seq]:
        admitted = []
        with self._cond:
            while self._waiting and self._free:
                gen = self._waiting[0]
                need = gen.prompt_tokens + gen.request.max_tokens
                if self._reserved + need > self.max_kv_tokens:
                    break  # the oldest waits for room; no overtaking, so none starves
                self._waiting.popleft()
                self._reserved += need
                seed = gen.request.seed
                rng = torch.Generator()
                rng.manual_seed(seed if seed is not None else torch.seed())
                seq = _Seq(gen, self._free.pop(), need, 0, 0, rng)
                self._running.append(seq)
                admitted.append(seq)
        return admitted

    def _prefill(self, seq: _Seq) -> None:
        gen = seq.gen
        t0 = time.perf_counter_ns()
        gen.started_ns = t0
        tokens = tinylm.encode(gen.request.prompt)
        logits = self.model.prefill(tokens, self._cache, seq.slot)
        seq.length = len(tokens)
        seq.last = tinylm.sample(logits, gen.request.temperature, seq.rng)
        now = time.perf_counter_ns()
        gen.prefill_ns = now - t0
        if gen.emit(bytes([seq.last]), len(self._running), now - t0, now):
            self._leave(seq)

    def _decode(self, batch: list[_Seq]) -> None:
        t0 = time.perf_counter_ns()
        logits = self.model.decode(
            [s.last for s in batch], [s.length for s in batch], [s.slot for s in batch], self._cache
        )
        picks = [
            tinylm.sample(row, s.gen.request.temperature, s.rng) for row, s in zip(logits, batch, strict=True)
        ]
        now = time.perf_counter_ns()
        self.stats.step(len(batch))
        for seq, token in zip(batch, picks, strict=True):
            seq.length += 1
            seq.last = token
            if seq.gen.emit(bytes([token]), len(batch), now - t0, now):
                self._leave(seq)

    def _leave(self, seq: _Seq) -> None:
        with self._cond:
            if seq in self._running:
                self._running.remove(seq)
                self._free.append(seq.slot)
                self._reserved -= seq.reserved

    def _fail_all(self, error: Exception) -> None:
        now = time.perf_counter_ns()
        for seq in list(self._running):
            if not seq.gen.done:
                seq.gen.finish("error", now, error)
            self._leave(seq)

    def _flush(self) -> None:
        out, self._out = self._out, []
        loop = self.loop
        if out and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_deliver, out)


def _deliver(events: list[tuple[Sink, Event]]) -> None:
    for sink, event in events:
        sink(event)
