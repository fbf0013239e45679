"""Simulated workers on a virtual clock, with the same timing models as the actors.

``SimLLMWorker`` does continuous batching the way ``LLMActor`` + ``SimulatedEngine`` do: a new
request stalls the batch for its prefill, then every running sequence gains one token per decode
step, and a step takes the roofline time of the batch's weights and KV cache. Between two events
the batch does not change, so progress is computed in closed form (tokens = elapsed / step time)
instead of step by step; that keeps a 1,000-worker run fast. ``SimCPUWorker`` runs one task at a
time in arrival order.

Workers hold at most ``slots`` tasks; under early binding the extra ones wait in the worker's own
FIFO queue, as they would in a plain load balancer's replica queue.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from raysched.core.roofline import PRESETS, STEP_OVERHEAD_S, Roofline
from raysched.core.types import CoreTask, ServicePrior

_EPS_TOKENS = 1e-6


@dataclass(slots=True)
class SimTask:
    """One task of a simulated workload: what the scheduler sees, plus the truth it does not."""

    arrival_s: float
    task: CoreTask
    cpu_service_s: float = 0.0  # a CPU task's true service time
    true_new_tokens: int = 0  # tokens an LLM really generates (<= task.max_new_tokens)


@dataclass(slots=True)
class Finished:
    task_id: str
    start_s: float
    batch_size: int
    generated: int


class SimCPUWorker:
    """One task at a time; ``speed`` > 1 is a slower machine (a service-time multiplier)."""

    concurrency = 1

    def __init__(self, worker_id: str, prior_s: float = 0.015, speed: float = 1.0) -> None:
        self.worker_id = worker_id
        self.speed = speed
        self.prior = ServicePrior(fixed_s=prior_s)
        self.max_context_tokens = 0
        self._queue: deque[SimTask] = deque()
        self._head_start_s = 0.0
        self.busy_s = 0.0

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, st: SimTask, now_s: float) -> None:
        if not self._queue:
            self._head_start_s = now_s
        self._queue.append(st)

    def next_event_s(self) -> float | None:
        if not self._queue:
            return None
        return self._head_start_s + self._queue[0].cpu_service_s * self.speed

    def abort(self, task_id: str, now_s: float) -> bool:
        """Drop a task that has not started (the one running cannot be stopped)."""
        for i, st in enumerate(self._queue):
            if st.task.task_id == task_id and i > 0:
                del self._queue[i]
                return True
        return False

    def set_speed(self, speed: float, now_s: float) -> None:
        """Change speed from ``now_s`` on; the task in progress keeps the work already done."""
        if self._queue:
            old_end = self._head_start_s + self._queue[0].cpu_service_s * self.speed
            if old_end > now_s:
                new_end = now_s + (old_end - now_s) * speed / self.speed
                self._head_start_s = new_end - self._queue[0].cpu_service_s * speed
        self.speed = speed

    def pop_finished(self, now_s: float) -> list[Finished]:
        done: list[Finished] = []
        while self._queue:
            end = self._head_start_s + self._queue[0].cpu_service_s * self.speed
            if end > now_s + 1e-12:
                break
            st = self._queue.popleft()
            done.append(Finished(st.task.task_id, self._head_start_s, 1, 0))
            self.busy_s += end - self._head_start_s
            self._head_start_s = end
        return done


class _Seq:
    __slots__ = ("ctx", "remaining", "start_s", "st")

    def __init__(self, st: SimTask, start_s: float) -> None:
        self.st = st
        self.remaining = float(st.true_new_tokens)
        self.ctx = float(st.task.num_prompt_tokens)
        self.start_s = start_s


class SimLLMWorker:
    """Continuous batching of up to ``max_batch_size`` sequences on a roofline-timed model."""

    def __init__(self, worker_id: str, preset: str = "7b", max_batch_size: int = 16,
                 speed: float = 1.0, roofline: Roofline | None = None) -> None:
        self.worker_id = worker_id
        self.roofline = roofline or PRESETS[preset]
        self.concurrency = max_batch_size
        self.speed = speed
        self.prior = self.roofline.prior()
        self.max_context_tokens = self.roofline.model.max_context_tokens
        m = self.roofline.model
        bw = self.roofline.mem_bandwidth_bytes_s()
        self._step_base_s = STEP_OVERHEAD_S + m.weight_bytes / bw
        self._step_per_ctx_s = m.kv_bytes_per_token / bw
        self._running: list[_Seq] = []
        self._waiting: deque[SimTask] = deque()
        self._sum_ctx = 0.0
        self._t = 0.0  # progress is accounted up to here
        self._stall_until = 0.0  # prefill in progress: no decoding before this
        self.busy_s = 0.0

    def __len__(self) -> int:
        return len(self._running) + len(self._waiting)

    def step_s(self) -> float:
        return self.speed * (self._step_base_s + self._step_per_ctx_s * self._sum_ctx)

    def add(self, st: SimTask, now_s: float) -> None:
        self._advance(now_s)
        if len(self._running) < self.concurrency:
            self._admit(st, now_s)
        else:
            self._waiting.append(st)

    def set_speed(self, speed: float, now_s: float) -> None:
        """Change speed from ``now_s`` on (progress so far is kept at the old speed)."""
        self._advance(now_s)
        self.speed = speed

    def abort(self, task_id: str, now_s: float) -> bool:
        """Stop a sequence wherever it is; its progress is lost (a preemption)."""
        self._advance(now_s)
        for s in self._running:
            if s.st.task.task_id == task_id:
                self._running.remove(s)
                self._sum_ctx -= s.ctx
                while self._waiting and len(self._running) < self.concurrency:
                    self._admit(self._waiting.popleft(), now_s)
                if not self._running:
                    self._sum_ctx = 0.0
                return True
        for st in self._waiting:
            if st.task.task_id == task_id:
                self._waiting.remove(st)
                return True
        return False

    def next_event_s(self) -> float | None:
        if not self._running:
            return None
        least = min(s.remaining for s in self._running)
        return max(self._t, self._stall_until) + max(least, 0.0) * self.step_s()

    def pop_finished(self, now_s: float) -> list[Finished]:
        self._advance(now_s)
        done = [s for s in self._running if s.remaining <= _EPS_TOKENS]
        if not done:
            return []
        batch = len(self._running)
        self._running = [s for s in self._running if s.remaining > _EPS_TOKENS]
        for s in done:
            self._sum_ctx -= s.ctx
        while self._waiting and len(self._running) < self.concurrency:
            self._admit(self._waiting.popleft(), now_s)
        if not self._running:
            self._sum_ctx = 0.0
        return [Finished(s.st.task.task_id, s.start_s, batch, s.st.true_new_tokens) for s in done]

    def _admit(self, st: SimTask, now_s: float) -> None:
        # The new sequence's prefill runs as one step that holds up the whole batch.
        self._stall_until = max(self._stall_until, now_s) + (
            self.speed * self.roofline.prefill_s(st.task.num_prompt_tokens))
        self._running.append(_Seq(st, now_s))
        self._sum_ctx += st.task.num_prompt_tokens

    def _advance(self, now_s: float) -> None:
        if self._running:
            start = max(self._t, min(self._stall_until, now_s))
            self.busy_s += now_s - self._t
            if now_s > start:
                tokens = (now_s - start) / self.step_s()
                for s in self._running:
                    s.remaining -= tokens
                    s.ctx += tokens
                self._sum_ctx += tokens * len(self._running)
        self._t = now_s


SimWorker = SimCPUWorker | SimLLMWorker
