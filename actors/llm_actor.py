"""LLM worker: continuous batching over an ``Engine``.

Requests wait in a small local heap (priority, deadline, arrival) and join the running batch at
the next engine step, up to ``max_batch_size``. When the batch is empty, the first arrival waits
up to ``max_wait_ms`` for company before the first step, trading a little latency for a fuller
batch. Finished sequences leave the batch at once and their completions stream back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from actors.aborts import AbortMarks
from actors.engines import Engine, Sequence, make_engine
from raysched.core.protocol import (
    ABORTED,
    ByRef,
    Completion,
    WorkerInfo,
    WorkItem,
    split_outputs,
)


class _Request:
    __slots__ = ("arrival_s", "binding", "done", "future", "latest_start_s", "seq", "start_s")

    def __init__(self, seq: Sequence, future: asyncio.Future[Completion],
                 latest_start_s: float, binding: int, done: int = 0) -> None:
        self.seq = seq
        # Tokens earlier attempts generated (``WorkItem.progress``): this one goes on from them.
        self.done = done
        self.future = future
        self.arrival_s = time.monotonic()
        self.start_s = 0.0
        self.latest_start_s = latest_start_s  # on the scheduler's clock (time.time())
        self.binding = binding


class LLMActor:
    """An async actor that owns one model engine and batches requests into it."""

    def __init__(self, worker_id: str, pool: str, engine: str = "sim", model: str = "7b",
                 max_batch_size: int = 16, max_wait_ms: float = 2.0,
                 time_scale: float = 1.0, engine_options: dict[str, Any] | None = None) -> None:
        self.worker_id = worker_id
        self.pool = pool
        self.engine: Engine = make_engine(engine, model, time_scale=time_scale,
                                          **(engine_options or {}))
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1e3
        self._waiting: list[tuple[int, float, int, _Request]] = []
        self._running: list[_Request] = []
        self._by_id: dict[str, _Request] = {}
        self._order = itertools.count()
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.steps = 0
        self._aborted = AbortMarks()

    def info(self) -> WorkerInfo:
        import ray

        return WorkerInfo(worker_id=self.worker_id, pool=self.pool, engine=self.engine.name,
                          simulated=self.engine.simulated, label=getattr(self.engine, "label", ""),
                          node_id=ray.get_runtime_context().get_node_id(),
                          prior=self.engine.prior(),
                          max_context_tokens=self.engine.max_context_tokens)

    async def execute(self, items: list[WorkItem]) -> AsyncIterator[list[Any]]:
        """Add ``items`` to the batch; stream completions back as sequences finish, each group
        followed by the list of its large outputs when it has any (``split_outputs``)."""
        self._ensure_loop()
        loop = asyncio.get_running_loop()
        pending = []
        limit = self.engine.max_context_tokens
        for item in items:
            p = item.payload
            if isinstance(p, ByRef):
                p = await p.ref
            seq = Sequence(item.task_id, p.prompt, self.engine.count_tokens(p.prompt),
                           p.max_new_tokens, item.priority)
            ids, done = item.progress or ((), 0)
            if done and self.engine.resumes and (len(ids) == done or self.engine.simulated):
                # Taken back before, it goes on from there: the engine prefills the prompt and
                # the tokens generated so far (a simulated engine has their count only).
                seq.num_generated, seq.token_ids = done, list(ids)
            else:
                done = 0
            req = _Request(seq, loop.create_future(), item.latest_start_s, item.binding, done)
            self._by_id[item.task_id] = req
            if self._aborted.stops(item):  # dropped before it came (``actors.aborts``)
                seq.finished_early = True
                self._resolve(req, ok=False, error=ABORTED)
                pending.append(req.future)
                continue
            if limit and seq.num_prompt_tokens + seq.max_new_tokens > limit:
                # The engine's own token count can exceed the scheduler's estimate: refuse this
                # request alone, before it can fail a batch; the same input fails every time.
                self._resolve(req, ok=False, error=(
                    f"prompt of {seq.num_prompt_tokens} tokens + {seq.max_new_tokens} new "
                    f"exceeds the model's context of {limit} tokens"))
                pending.append(req.future)
                continue
            heapq.heappush(self._waiting, (item.priority, item.deadline_s, next(self._order), req))
            pending.append(req.future)
        assert self._wake is not None
        self._wake.set()
        while pending:
            done, rest = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            pending = list(rest)
            group, big = split_outputs([f.result() for f in done])
            yield group
            if big:
                yield big

    async def abort(self, task_ids: list[str], issued_s: float = float("inf")) -> int:
        """Stop the given requests wherever they are; their completions say aborted. One not
        here yet (its call still on its way) is marked, and stopped when it comes if it was
        sent before ``issued_s`` (the scheduler's clock; ``actors.aborts``)."""
        n = 0
        for task_id in task_ids:
            req = self._by_id.get(task_id)
            if req is not None and not req.future.done():
                req.seq.finished_early = True
                self._resolve(req, ok=False, error=ABORTED)
                n += 1
            else:
                self._aborted.mark([task_id], issued_s)
        return n

    def set_speed(self, speed: float) -> None:
        """Slow the simulated engine down (a drill: the scheduler is not told)."""
        if not hasattr(self.engine, "speed"):
            raise ValueError(f"engine {self.engine.name} has no speed to set")
        self.engine.speed = speed

    async def ping(self) -> str:
        """A liveness check: answers at once, whatever the batch is doing."""
        return self.worker_id

    def load(self) -> dict[str, int]:
        return {"running": len(self._running), "waiting": len(self._waiting), "steps": self.steps}

    def _ensure_loop(self) -> None:
        if self._loop_task is None:
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())

    async def _batch_loop(self) -> None:
        assert self._wake is not None
        while True:
            if not self._running and not self._waiting:
                await self._wake.wait()
                self._wake.clear()
                if self.max_wait_s > 0 and len(self._waiting) < self.max_batch_size:
                    await asyncio.sleep(self.max_wait_s)
            self._admit()
            live = [r for r in self._running if not r.future.done()]
            if not live:
                self._running = []
                continue
            # Take one step at a time while others wait to join, so they join at the next step.
            room = len(live) < self.max_batch_size and bool(self._waiting)
            try:
                await self.engine.step([r.seq for r in live], max_steps=1 if room else 1 << 30)
            except Exception as exc:  # noqa: BLE001 - the engine is gone: every request in it may be retried
                for r in live:
                    self._resolve(r, ok=False, error=f"engine failed: {exc!r}", retryable=True)
                self._running = []
                if getattr(self.engine, "dead", False):
                    # A dead engine does not come back: let the completions go out, then end the
                    # actor so the scheduler replaces the worker instead of retrying into it.
                    asyncio.get_running_loop().call_later(1.0, os._exit, 1)
                continue
            self.steps += 1
            batch_size = len(live)
            for r in live:
                if r.future.done():
                    continue
                if r.seq.error:
                    self._resolve(r, ok=False, error=r.seq.error,
                                  retryable=r.seq.error_retryable, batch_size=batch_size)
                elif r.seq.done:
                    self._resolve(r, ok=True, batch_size=batch_size)
            self._running = [r for r in live if not r.future.done()]

    def _admit(self) -> None:
        now = time.monotonic()
        wall_s = time.time()
        while self._waiting and len(self._running) < self.max_batch_size:
            req = heapq.heappop(self._waiting)[3]
            if req.future.done():
                continue
            if wall_s > req.latest_start_s:
                self._resolve(req, ok=False, expired=True,
                              error="its latest start passed while it waited in the worker")
                continue
            req.start_s = now
            self._running.append(req)

    def _resolve(self, req: _Request, ok: bool, error: str = "", retryable: bool = False,
                 batch_size: int = 1, expired: bool = False) -> None:
        now = time.monotonic()
        started = req.start_s or now
        seq = req.seq
        self._by_id.pop(seq.request_id, None)
        output: Any = None
        if ok:
            output = self.engine.text(seq)  # earlier attempts' tokens decoded with this one's
        elif error == ABORTED and seq.num_generated > req.done and self.engine.resumes:
            # Its progress, should the scheduler run it again (a preemption): every token so
            # far, as ids, so the next attempt decodes them with its own in one piece.
            output = list(seq.token_ids)
        req.future.set_result(Completion(
            seq.request_id, self.worker_id, ok=ok,
            output=output, error=error, retryable=retryable,
            expired=expired, binding=req.binding, service_s=now - started,
            worker_queue_s=started - req.arrival_s,
            # This attempt's work: it prefilled the tokens earlier ones generated, too.
            num_prompt_tokens=seq.num_prompt_tokens + req.done,
            num_generated_tokens=seq.num_generated - req.done,
            batch_size=batch_size, **(self._engine_telemetry(seq.request_id) if ok else {})))

    def _engine_telemetry(self, task_id: str) -> dict[str, Any]:
        """The engine's own metrics of a request it just finished, as Completion fields."""
        get = getattr(self.engine, "telemetry", None)
        t = get(task_id) if callable(get) else None
        if not t:
            return {}
        return {"finish_reason": t.get("finish_reason") or "", "engine_queue_s": t.get("queue_s"),
                "ttft_s": t.get("ttft_s"), "tpot_s": t.get("tpot_s"),
                "engine_batch_size": t.get("batch_size_mean")}
