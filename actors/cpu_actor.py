"""CPU worker: a numpy fraud classifier and plain Python callables sent by drivers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
import numpy as np
import ray

from actors.aborts import AbortMarks
from raysched.core.protocol import (
    FRAUD_NUM_FEATURES,
    ByRef,
    Completion,
    PickledOutput,
    WorkerInfo,
    WorkItem,
    WorkPayload,
    describe_error,
    split_outputs,
)
from raysched.core.types import ServicePrior

# Logistic-regression fraud scorer. Features, in order (standardised by the caller):
#   0 amount z-score vs the card's history      4 foreign merchant (0/1)
#   1 seconds since last transaction, z-score   5 card not present (0/1)
#   2 hour-of-day risk (0..1)                   6 merchant category risk (0..1)
#   3 new device (0/1)                          7 failed attempts in last hour, z-score
# The weights are fixed illustrative values, not trained on real data: large amounts, new
# devices, card-not-present and recent failures raise the score; a long gap lowers it slightly.
FRAUD_WEIGHTS = np.array([1.2, -0.3, 0.8, 1.5, 0.9, 1.1, 1.4, 0.7])
assert FRAUD_WEIGHTS.size == FRAUD_NUM_FEATURES
FRAUD_BIAS = -4.0
FRAUD_MODEL = "fraud-logreg-v1"
# The prior of a CPU task: scoring takes microseconds, the dispatch round trip about a
# millisecond. One constant for every CPU worker keeps like workers in one placement group.
CPU_PRIOR_S = 1e-3
# Reports are coalesced: one streamed message per this many seconds of work, not one per task.
COALESCE_S = 0.001
# Cancels and liveness checks run on their own thread beside the work (Ray concurrency
# groups), so they are answered while a task runs; the actor is created with
# ``concurrency_groups=CONCURRENCY_GROUPS``.
CONTROL_GROUP = "control"
# Tasks a driver sends straight here under an express lease (``raysched.client``), and the
# lease's grant and end, run on a thread of their own; the worker still runs one task at a time.
EXPRESS_GROUP = "express"
CONCURRENCY_GROUPS = {CONTROL_GROUP: 1, EXPRESS_GROUP: 1}


def fraud_probability(features: np.ndarray) -> np.ndarray:
    """Probability of fraud for each row of ``features`` (shape ``(n, 8)`` or ``(8,)``)."""
    z = np.asarray(features, dtype=np.float64) @ FRAUD_WEIGHTS + FRAUD_BIAS
    return 1.0 / (1.0 + np.exp(-z))


class CPUActor:
    """Runs one task at a time: ``classification`` through the fraud model, or a callable."""

    def __init__(self, worker_id: str, pool: str) -> None:
        self.worker_id = worker_id
        self.pool = pool
        self.fixed_s = CPU_PRIOR_S
        # Tasks to drop before they start: marked by ``abort`` on the control thread, read
        # before each task starts.
        self._aborted = AbortMarks()
        # The express lease the scheduler granted on this worker ("" for none), and the lock
        # that keeps one task at a time across the scheduler's calls and the express thread.
        self._lease = ""
        self._running = threading.Lock()

    def info(self) -> WorkerInfo:
        return WorkerInfo(worker_id=self.worker_id, pool=self.pool, engine="cpu",
                          simulated=False, node_id=ray.get_runtime_context().get_node_id(),
                          prior=ServicePrior(fixed_s=self.fixed_s))

    @ray.method(concurrency_group=CONTROL_GROUP)
    def abort(self, task_ids: list[str], issued_s: float = float("inf")) -> int:
        """Make sure the given tasks, as sent before ``issued_s`` (the scheduler's clock),
        never start here; returns how many were not marked yet.

        Runs on the control thread, beside ``execute``, so a cancel holds while the worker is
        busy with the task in front (``actors.aborts``).
        """
        return self._aborted.mark(task_ids, issued_s)

    @ray.method(concurrency_group=CONTROL_GROUP)
    def ping(self) -> str:
        """A liveness check: answers at once, even while a task runs."""
        return self.worker_id

    @ray.method(concurrency_group=EXPRESS_GROUP)
    def grant(self, lease_id: str) -> None:
        """Take express tasks under ``lease_id`` from now on (the scheduler holds this worker
        out of placement for it)."""
        self._lease = lease_id

    @ray.method(concurrency_group=EXPRESS_GROUP)
    def revoke(self, lease_id: str) -> bool:
        """End ``lease_id``: express tasks sent under it from now on are refused. On the
        express thread, so it answers once the express task running (if any) has ended, and
        the scheduler may place work here again. False when it was not the current lease."""
        if self._lease != lease_id:
            return False
        self._lease = ""
        return True

    @ray.method(concurrency_group=EXPRESS_GROUP)
    def express(self, lease_id: str, item: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """Run one task (``WorkItem.to_wire``) a driver sent straight here under ``lease_id``
        and answer with its ``Completion.to_wire``; None, without running it, when that lease
        is not (or no longer) this worker's, or the worker is busy: the driver then submits
        it to the scheduler. Cancel and latest start are checked as for any task."""
        if lease_id != self._lease or not self._running.acquire(blocking=False):
            return None
        try:
            return self._one(WorkItem.from_wire(item)).to_wire()
        finally:
            self._running.release()

    def execute(self, items: list[WorkItem]) -> Iterator[list[Any]]:
        """Run ``items`` in order, streaming completions back in small groups.

        Each group is a list of completions; when outputs in it are large, the next message is
        the list of those outputs (``split_outputs``), so the scheduler passes them on by
        reference.
        """
        done: list[Completion] = []
        last_flush = time.perf_counter()
        for item in items:
            with self._running:
                done.append(self._one(item))
            if time.perf_counter() - last_flush >= COALESCE_S:
                yield from _messages(done)
                done, last_flush = [], time.perf_counter()
        if done:
            yield from _messages(done)

    @ray.method(num_returns=2)
    def run(self, items: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[Any]]:
        """Run ``items`` (``WorkItem.to_wire``) in order and answer once: the completions
        (``Completion.to_wire``) and the list of large outputs (``split_outputs``). For short
        batches, where a stream's own cost (a message per group) is more than the wait for the
        last task; plain tuples cost Ray less to send than dataclasses."""
        with self._running:
            done, big = split_outputs([self._one(WorkItem.from_wire(t)) for t in items])
        return [c.to_wire() for c in done], big

    def _one(self, item: WorkItem) -> Completion:
        """Run one task, unless it was cancelled (reported aborted) or its latest start has
        passed (reported ``expired``): both are checked just before it would start."""
        if self._aborted.stops(item):
            return Completion(item.task_id, self.worker_id, ok=False, service_s=0.0,
                              error="aborted before it started", binding=item.binding)
        if time.time() > item.latest_start_s:
            return Completion(item.task_id, self.worker_id, ok=False, service_s=0.0,
                              expired=True, error="its latest start passed",
                              binding=item.binding)
        return self._run(item)

    def _run(self, item: WorkItem) -> Completion:
        start = time.perf_counter()
        p = item.payload
        try:
            if isinstance(p, ByRef):
                p = ray.get(p.ref)
            if p.fn is not None:
                args, kwargs = load_arguments(p)
                output = _pickled(load_callable(p.fn)(*args, **kwargs))
            elif item.kind == "classification":
                if len(p.features) != FRAUD_WEIGHTS.size:
                    raise ValueError(f"{FRAUD_MODEL} takes {FRAUD_WEIGHTS.size} features, "
                                     f"got {len(p.features)}")
                prob = float(fraud_probability(np.asarray(p.features)))
                output = {"fraud_probability": prob, "flagged": prob >= 0.5, "model": FRAUD_MODEL}
            else:
                raise ValueError(f"a CPU worker cannot run kind {item.kind!r} without payload.fn")
        # The task's own failure, reported, not retried. BaseException: a callable's
        # KeyboardInterrupt or SystemExit ends its own task, not the call carrying the batch
        # (the batch's other tasks would fail with it) or the worker.
        except BaseException as exc:  # noqa: BLE001
            return Completion(item.task_id, self.worker_id, ok=False,
                              service_s=time.perf_counter() - start,
                              error=describe_error(exc), binding=item.binding)
        return Completion(item.task_id, self.worker_id, ok=True, output=output,
                          service_s=time.perf_counter() - start, binding=item.binding)


def _pickled(output: Any) -> PickledOutput:
    """A callable's output pickled on its own (``PickledOutput``); ``TypeError`` saying so when
    it cannot be pickled (a lock, a generator)."""
    try:
        return PickledOutput(cloudpickle.dumps(output))
    except Exception as exc:  # noqa: BLE001 - pickling fails in many ways
        raise TypeError(f"the callable's output ({type(output).__name__}) cannot be pickled: "
                        f"{describe_error(exc)}") from None


def load_callable(fn: bytes | Callable[..., Any]) -> Callable[..., Any]:
    """A task's callable: as it is, or unpickled from the driver's bytes (``Payload.to_work``).
    Unpickled for each task, as Ray unpickles a call's arguments: no state a function keeps
    (a global, a default) passes from one task, or one driver, to the next."""
    if isinstance(fn, bytes):
        loaded: Callable[..., Any] = cloudpickle.loads(fn)
        return loaded
    return fn


def load_arguments(p: WorkPayload) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A task's ``(args, kwargs)``: unpickled from the driver's bytes (``Payload.to_work``),
    where it pickled them, else as they are. What unpickling raises fails the task."""
    if p.pickled_args is None:
        return p.args, p.kwargs
    args, kwargs = cloudpickle.loads(p.pickled_args)
    return args, kwargs


def _messages(done: list[Completion]) -> Iterator[list[Any]]:
    """A group of completions as stream messages: the group, then its large outputs if any."""
    done, big = split_outputs(done)
    yield done
    if big:
        yield big


def remote_cpu_actor() -> Any:
    """``CPUActor`` as a Ray actor class, with the control thread its ``abort`` and ``ping``
    need (Ray takes concurrency groups only where the class is made remote)."""
    return ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(CPUActor)
