"""Simulated workers on a virtual clock, with the same timing models as the actors.

``SimLLMWorker`` does continuous batching on a roofline-timed model, in one of two ways:

- **chunked prefill** (the default, as vLLM V1 serves): every engine step has a token budget
  (``max_num_batched_tokens``). Running sequences are served first, in the order they joined:
  each decoding one takes one token, a prefilling one takes as much of its remaining prompt as
  the budget still allows; new requests get what is left. A step processing ``n`` tokens with
  ``c`` tokens of KV cache in the batch takes ``overhead + max(weights + KV bytes over memory
  bandwidth, 2 * params * n FLOPs over compute)``: a prefill chunk is compute-bound and the
  decodes of the batch ride along in the same step, instead of waiting for the whole prefill.
  The step that completes a prompt samples its first output token.
- **whole-prefill stall** (``chunked_prefill=False``, what the simulated engine in
  ``actors.engines.simulated`` does): a new request's whole prefill runs as one step that holds
  up the batch, then every running sequence gains one token per decode step.

While only decodes run, the batch does not change between two events, so progress is computed
in closed form (tokens = elapsed / step time) instead of step by step; steps that carry prefill
chunks are taken one at a time (a prompt of ``p`` tokens needs ``ceil(p / budget)`` of them).
That keeps a 1,000-worker run fast. ``SimCPUWorker`` runs one task at a time.

Workers hold at most ``slots`` tasks; under early binding the extra ones wait in the worker's own
queue, as they would in a load balancer's replica queue: in arrival order by default, or in
priority-class order (``queue_order="class_arrival"``, as a vLLM replica started with
``--scheduling-policy priority`` orders its waiting requests: priority, then arrival).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from raysched.core.roofline import PRESETS, STEP_OVERHEAD_S, Roofline
from raysched.core.types import CoreTask, ServicePrior

_EPS_TOKENS = 1e-6
_EPS_S = 1e-12

# vLLM V1's default token budget per engine step for online serving (the OpenAI API server) on
# an A100, or any GPU with under 70 GiB: ``max_num_batched_tokens = 2048``
# (vllm/engine/arg_utils.py, the batch defaults keyed by UsageContext.OPENAI_API_SERVER; H100-
# class GPUs get 8192). V1 always chunks prefills to this budget. The simulated presets are A100s.
MAX_NUM_BATCHED_TOKENS = 2048

QUEUE_ORDERS = ("arrival", "class_arrival")


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


class ReplicaQueue:
    """A worker's own queue of tasks bound to it that have not started.

    ``order``: ``"arrival"`` (FIFO) or ``"class_arrival"`` (priority class, then arrival).
    Removal is a linear scan: it happens only on preemption and cancellation.
    """

    def __init__(self, order: str = "arrival") -> None:
        if order not in QUEUE_ORDERS:
            raise ValueError(f"unknown queue order {order!r}; known: {QUEUE_ORDERS}")
        self._by_class = order == "class_arrival"
        self._heap: list[tuple[int, int, SimTask]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, st: SimTask) -> None:
        cls = int(st.task.priority) if self._by_class else 0
        heapq.heappush(self._heap, (cls, next(self._seq), st))

    def pop(self) -> SimTask | None:
        return heapq.heappop(self._heap)[2] if self._heap else None

    def remove(self, task_id: str) -> bool:
        for i, (_, _, st) in enumerate(self._heap):
            if st.task.task_id == task_id:
                self._heap.pop(i)
                heapq.heapify(self._heap)
                return True
        return False


class SimCPUWorker:
    """One task at a time; ``speed`` > 1 is a slower machine (a service-time multiplier)."""

    concurrency = 1

    def __init__(self, worker_id: str, prior_s: float = 0.015, speed: float = 1.0,
                 queue_order: str = "arrival") -> None:
        self.worker_id = worker_id
        self.speed = speed
        self.prior = ServicePrior(fixed_s=prior_s)
        self.max_context_tokens = 0
        self._current: SimTask | None = None
        self._waiting = ReplicaQueue(queue_order)
        self._head_start_s = 0.0
        self.busy_s = 0.0

    def __len__(self) -> int:
        return (self._current is not None) + len(self._waiting)

    def add(self, st: SimTask, now_s: float) -> None:
        if self._current is None:
            self._current, self._head_start_s = st, now_s
        else:
            self._waiting.push(st)

    def next_event_s(self) -> float | None:
        if self._current is None:
            return None
        return self._head_start_s + self._current.cpu_service_s * self.speed

    def abort(self, task_id: str, now_s: float) -> int | None:
        """Drop a task that has not started (the one running cannot be stopped). Returns 0
        (a CPU task generates no tokens) when it was dropped, None when it was not here."""
        return 0 if self._waiting.remove(task_id) else None

    def set_speed(self, speed: float, now_s: float) -> None:
        """Change speed from ``now_s`` on; the task in progress keeps the work already done."""
        if self._current is not None:
            old_end = self._head_start_s + self._current.cpu_service_s * self.speed
            if old_end > now_s:
                new_end = now_s + (old_end - now_s) * speed / self.speed
                self._head_start_s = new_end - self._current.cpu_service_s * speed
        self.speed = speed

    def pop_finished(self, now_s: float) -> list[Finished]:
        done: list[Finished] = []
        while self._current is not None:
            end = self._head_start_s + self._current.cpu_service_s * self.speed
            if end > now_s + _EPS_S:
                break
            done.append(Finished(self._current.task.task_id, self._head_start_s, 1, 0))
            self.busy_s += end - self._head_start_s
            self._head_start_s = end
            self._current = self._waiting.pop()
        return done


class _Seq:
    """A running sequence: tokens still to generate, KV context so far, prompt not prefilled."""

    __slots__ = ("ctx", "prefill_left", "remaining", "start_s", "st")

    def __init__(self, st: SimTask, start_s: float, prefill_left: int = 0) -> None:
        self.st = st
        self.remaining = float(st.true_new_tokens)
        self.prefill_left = prefill_left
        self.ctx = float(st.task.num_prompt_tokens - prefill_left)
        self.start_s = start_s

    def copy(self) -> _Seq:
        c = _Seq.__new__(_Seq)
        c.st, c.remaining, c.prefill_left = self.st, self.remaining, self.prefill_left
        c.ctx, c.start_s = self.ctx, self.start_s
        return c

    @property
    def done(self) -> bool:
        return self.prefill_left == 0 and self.remaining <= _EPS_TOKENS


_Plan = list[tuple[_Seq, int]]  # (sequence, prefill tokens this step; 0: one decode token)


def _plan_step(running: list[_Seq], budget_tokens: int) -> tuple[_Plan, int, float]:
    """vLLM V1's step: running sequences in the order they joined, each taking one decode token
    or as much of its prompt as the budget allows, until the budget is spent. Returns the plan,
    the tokens it processes and the KV context it reads."""
    plan: _Plan = []
    tokens, ctx = 0, 0.0
    for s in running:
        if tokens >= budget_tokens:
            break
        chunk = min(s.prefill_left, budget_tokens - tokens)
        plan.append((s, chunk))
        tokens += chunk or 1
        ctx += s.ctx
    return plan, tokens, ctx


def _apply_step(plan: _Plan) -> None:
    for s, chunk in plan:
        if chunk:
            s.prefill_left -= chunk
            s.ctx += chunk
            if s.prefill_left:
                continue
        # A decode token, or the first output token sampled by the step that ends the prompt.
        s.remaining -= 1.0
        s.ctx += 1.0


class SimLLMWorker:
    """Continuous batching of up to ``max_batch_size`` sequences on a roofline-timed model.

    ``chunked_prefill`` (default True): vLLM V1's mixed steps under a budget of
    ``max_num_batched_tokens`` tokens per step (default ``MAX_NUM_BATCHED_TOKENS``, vLLM's
    default on an A100); False: each prefill stalls the whole batch (the older model). ``speed``
    multiplies every step's time. ``queue_order``: the order of the worker's own queue (see
    ``ReplicaQueue``).
    """

    def __init__(self, worker_id: str, preset: str = "7b", max_batch_size: int = 16,
                 speed: float = 1.0, roofline: Roofline | None = None, *,
                 chunked_prefill: bool = True,
                 max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
                 queue_order: str = "arrival") -> None:
        if max_num_batched_tokens < max_batch_size:
            raise ValueError("max_num_batched_tokens must be at least max_batch_size (one "
                             "decode token per running sequence)")
        self.worker_id = worker_id
        self.roofline = roofline or PRESETS[preset]
        self.concurrency = max_batch_size
        self.speed = speed
        self.chunked_prefill = chunked_prefill
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prior = self.roofline.prior()
        self.max_context_tokens = self.roofline.model.max_context_tokens
        m = self.roofline.model
        bw = self.roofline.mem_bandwidth_bytes_s()
        self._step_base_s = STEP_OVERHEAD_S + m.weight_bytes / bw
        self._step_per_ctx_s = m.kv_bytes_per_token / bw
        self._weights_s = m.weight_bytes / bw
        self._prefill_s_per_token = self.roofline.prefill_s(1)
        self._running: list[_Seq] = []
        self._waiting = ReplicaQueue(queue_order)
        self._sum_ctx = 0.0
        self._t = 0.0  # progress is accounted up to here (a step in progress: its start)
        self._stall_until = 0.0  # whole-prefill stall: no decoding before this
        # Chunked prefill: the step in progress (None while only decodes run, in closed form),
        # and sequences that finished but were not yet collected by ``pop_finished``.
        self._step_end_s: float | None = None
        self._step_start_s = 0.0
        self._plan: _Plan = []
        self._done: list[Finished] = []
        self.busy_s = 0.0

    def __len__(self) -> int:
        return len(self._running) + len(self._waiting)

    def step_s(self) -> float:
        """The time of one decode step of the running batch now."""
        if self.chunked_prefill:
            return self._decode_step_s(self._running)
        return self.speed * (self._step_base_s + self._step_per_ctx_s * self._sum_ctx)

    def add(self, st: SimTask, now_s: float) -> None:
        self._advance(now_s)
        if len(self._running) >= self.concurrency:
            self._waiting.push(st)
        elif self.chunked_prefill:
            self._running.append(_Seq(st, now_s, st.task.num_prompt_tokens))
            self._kick(now_s)
        else:
            self._admit(st, now_s)

    def set_speed(self, speed: float, now_s: float) -> None:
        """Change speed from ``now_s`` on (progress so far, and a step in progress, keep the
        old speed)."""
        self._advance(now_s)
        self.speed = speed

    def abort(self, task_id: str, now_s: float) -> int | None:
        """Stop a sequence wherever it is (a preemption). Returns the output tokens it had
        generated (0 for one still waiting or in its prefill), None when it is not here."""
        self._advance(now_s)
        for s in self._running:
            if s.st.task.task_id == task_id:
                self._running.remove(s)
                generated = 0 if s.prefill_left else max(
                    0, int(s.st.true_new_tokens - s.remaining))
                if self.chunked_prefill:
                    self._plan = [(x, c) for x, c in self._plan if x is not s]
                    self._fill(now_s)
                    self._kick(now_s)
                    return generated
                self._sum_ctx -= s.ctx
                while self._waiting and len(self._running) < self.concurrency:
                    self._admit(self._pop_waiting(), now_s)
                if not self._running:
                    self._sum_ctx = 0.0
                return generated
        before = len(self._done)
        self._done = [f for f in self._done if f.task_id != task_id]
        return 0 if len(self._done) < before or self._waiting.remove(task_id) else None

    def next_event_s(self) -> float | None:
        """When the next sequence finishes (None when none runs)."""
        if not self.chunked_prefill:
            if not self._running:
                return None
            least = min(s.remaining for s in self._running)
            return max(self._t, self._stall_until) + max(least, 0.0) * self.step_s()
        if self._done:
            return self._t
        if not self._running:
            return None
        t, seqs = self._t, self._running
        if self._step_end_s is not None:
            # Play the prefill steps forward on copies until one finishes a sequence or only
            # decodes are left; a step's plan is fixed when it starts, as in _advance.
            clones = {id(s): s.copy() for s in self._running}
            seqs = list(clones.values())
            plan = [(clones[id(s)], c) for s, c in self._plan]
            end = self._step_end_s
            while True:
                _apply_step(plan)
                if any(s.done for s in seqs):
                    return end
                if not any(s.prefill_left for s in seqs):
                    t = end
                    break
                plan, tokens, ctx = _plan_step(seqs, self.max_num_batched_tokens)
                end += self._mixed_step_s(tokens, ctx)
        least = min(s.remaining for s in seqs)
        return t + max(least, 0.0) * self._decode_step_s(seqs)

    def pop_finished(self, now_s: float) -> list[Finished]:
        self._advance(now_s)
        if self.chunked_prefill:
            done, self._done = self._done, []
            if done:
                self._fill(now_s)
                self._kick(now_s)
            return done
        done = [s for s in self._running if s.remaining <= _EPS_TOKENS]
        if not done:
            return []
        batch = len(self._running)
        self._running = [s for s in self._running if s.remaining > _EPS_TOKENS]
        for s in done:
            self._sum_ctx -= s.ctx
        while self._waiting and len(self._running) < self.concurrency:
            self._admit(self._pop_waiting(), now_s)
        if not self._running:
            self._sum_ctx = 0.0
        return [Finished(s.st.task.task_id, s.start_s, batch, s.st.true_new_tokens) for s in done]

    def _pop_waiting(self) -> SimTask:
        st = self._waiting.pop()
        assert st is not None
        return st

    # -- whole-prefill stall -----------------------------------------------------------------

    def _admit(self, st: SimTask, now_s: float) -> None:
        # The new sequence's prefill runs as one step that holds up the whole batch.
        self._stall_until = max(self._stall_until, now_s) + (
            self.speed * self.roofline.prefill_s(st.task.num_prompt_tokens))
        self._running.append(_Seq(st, now_s))
        self._sum_ctx += st.task.num_prompt_tokens

    def _advance(self, now_s: float) -> None:
        if self.chunked_prefill:
            self._advance_chunked(now_s)
            return
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

    # -- chunked prefill ---------------------------------------------------------------------

    def _mixed_step_s(self, num_tokens: int, ctx_tokens: float) -> float:
        """One engine step over ``num_tokens`` tokens reading ``ctx_tokens`` of KV cache: the
        roofline's larger of memory time (weights once, plus the KV) and compute time."""
        memory_s = self._weights_s + self._step_per_ctx_s * ctx_tokens
        compute_s = self._prefill_s_per_token * num_tokens
        return self.speed * (STEP_OVERHEAD_S + max(memory_s, compute_s))

    def _decode_step_s(self, seqs: list[_Seq]) -> float:
        return self._mixed_step_s(len(seqs), sum(s.ctx for s in seqs))

    def _advance_chunked(self, now_s: float) -> None:
        while self._step_end_s is not None and self._step_end_s <= now_s + _EPS_S:
            end = self._step_end_s
            self.busy_s += end - self._t
            self._t = end
            _apply_step(self._plan)
            self._sweep()
            self._fill(end)
            self._start_step(end)
        if self._step_end_s is None:
            if self._running and now_s > self._t:
                tokens = (now_s - self._t) / self._decode_step_s(self._running)
                for s in self._running:
                    s.remaining -= tokens
                    s.ctx += tokens
                self.busy_s += now_s - self._t
            self._t = now_s
            self._sweep()

    def _sweep(self) -> None:
        """Move finished sequences out of the batch, to be collected by ``pop_finished``."""
        if not any(s.done for s in self._running):
            return
        batch = len(self._running)
        self._done += [Finished(s.st.task.task_id, s.start_s, batch, s.st.true_new_tokens)
                       for s in self._running if s.done]
        self._running = [s for s in self._running if not s.done]

    def _fill(self, now_s: float) -> None:
        while self._waiting and len(self._running) < self.concurrency:
            st = self._pop_waiting()
            self._running.append(_Seq(st, now_s, st.task.num_prompt_tokens))

    def _kick(self, now_s: float) -> None:
        """After the batch changed at ``now_s``: a step that starts now is planned again (the
        engine had not launched it yet); with no step in progress, start one if a prompt
        waits for prefill."""
        if self._step_end_s is None or self._step_start_s >= now_s - _EPS_S:
            self._start_step(now_s)

    def _start_step(self, now_s: float) -> None:
        if not any(s.prefill_left for s in self._running):
            self._step_end_s, self._plan = None, []
            return
        self._plan, tokens, ctx = _plan_step(self._running, self.max_num_batched_tokens)
        self._step_start_s = now_s
        self._step_end_s = now_s + self._mixed_step_s(tokens, ctx)


SimWorker = SimCPUWorker | SimLLMWorker
