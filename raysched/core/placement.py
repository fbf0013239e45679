"""Placement: filter, then score, then pick.

A ``Placement`` answers two questions about a task: where should it run now (``place``) and how
fast could it possibly finish on an idle eligible worker (``best_case_s``, which admission and
expiry use). How long a task takes on a worker is a ``ServiceEstimator``'s business, so a learned
estimator can replace the engine priors without touching the rest.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from raysched.core.load import LoadTable, WorkerGroup, WorkerLoad
from raysched.core.protocol import Completion
from raysched.core.types import CoreTask


class ServiceEstimator(Protocol):
    def service_s(self, task: CoreTask, worker: WorkerLoad) -> float:
        """Predicted service time of ``task`` if it joined ``worker`` now."""
        ...

    def idle_service_s(self, task: CoreTask, group: WorkerGroup) -> float:
        """The best case of ``task`` alone on an idle worker of ``group``: what admission
        refuses on, so it must not be pessimistic."""
        ...

    def planned_idle_s(self, task: CoreTask, group: WorkerGroup) -> float:
        """What expiry plans ``task`` to take on an idle worker of ``group`` (at least
        ``idle_service_s``): a task queued past ``deadline - planned`` ends ``expired``, so it
        must not be optimistic."""
        ...

    def idle_cases_s(self, task: CoreTask, group: WorkerGroup) -> tuple[float, float]:
        """``(idle_service_s, planned_idle_s)`` at once: admission asks for both on every
        submit, and the planned figure is bounded below by the idle one."""
        ...

    def observe(self, task: CoreTask, completion: Completion, now_s: float) -> None:
        """Learn from a completion (a no-op for fixed priors)."""
        ...

    def figures_version(self, task: CoreTask) -> int:
        """A count that grows whenever ``idle_cases_s`` of ``task`` may have moved by more than
        a few percent since it last grew (always 0 for fixed priors): the core figures a
        queued task's latest start again only then."""
        ...


class PriorEstimator:
    """Service time from each worker's engine prior; learns nothing."""

    def service_s(self, task: CoreTask, worker: WorkerLoad) -> float:
        batch = min(len(worker.in_flight) + 1, worker.spec.concurrency)
        return worker.spec.prior.service_s(task.num_prompt_tokens, task.max_new_tokens, batch)

    def idle_service_s(self, task: CoreTask, group: WorkerGroup) -> float:
        return group.prior.service_s(task.num_prompt_tokens, task.max_new_tokens, 1)

    def planned_idle_s(self, task: CoreTask, group: WorkerGroup) -> float:
        return self.idle_service_s(task, group)

    def idle_cases_s(self, task: CoreTask, group: WorkerGroup) -> tuple[float, float]:
        idle_s = group.prior.service_s(task.num_prompt_tokens, task.max_new_tokens, 1)
        return idle_s, idle_s

    def observe(self, task: CoreTask, completion: Completion, now_s: float) -> None:
        return None

    def figures_version(self, task: CoreTask) -> int:
        return 0


@dataclass(slots=True)  # not frozen, as ``types.Assignment``: one per decision
class Choice:
    """Where to run a task: the worker, its predicted service and finish (seconds).

    ``misses``: the placement is confident that no eligible worker can finish the task by its
    deadline, counting the work already queued ahead of it there (placements that cannot tell
    leave it False); a core that enforces deadlines expires the task instead of running it.
    ``waits``: the placement is confident that ``worker``, and every other free one, would
    finish it past its deadline, but a worker with no free slot now may still make it; a core
    that enforces deadlines leaves the task queued (its latest start ends the wait) instead
    of running it here.
    ``late``: the placement's central estimate (not the confident bound ``misses`` and
    ``waits`` use) has every free worker finish the task past its deadline; a core gives the
    free slots to queued tasks predicted to make theirs first and runs this one on a slot that
    is still free after them.
    """

    worker: WorkerLoad
    service_s: float
    finish_s: float
    misses: bool = False
    waits: bool = False
    late: bool = False


def context_need(task: CoreTask) -> int:
    """Tokens of context ``task`` needs: its prompt and answer, or the floor it asked for."""
    return max(task.num_prompt_tokens + task.max_new_tokens, task.min_context_tokens)


def fits_context(task: CoreTask, max_context_tokens: int) -> bool:
    """Filter: can a worker with this context limit (0: none) hold ``task`` at all?"""
    return max_context_tokens == 0 or context_need(task) <= max_context_tokens


def eligible(task: CoreTask, group: WorkerGroup) -> bool:
    """Filter: can workers of ``group`` hold this task at all (context length)?"""
    return fits_context(task, group.max_context_tokens)


class Placement(Protocol):
    def place(self, task: CoreTask, table: LoadTable, now_s: float) -> Choice | None:
        """The worker to run ``task`` now, or None when no eligible worker has a free slot."""
        ...

    def best_case_s(self, task: CoreTask, table: LoadTable) -> float | None:
        """Fastest possible service on an idle eligible worker; None when none is eligible."""
        ...

    def planned_case_s(self, task: CoreTask, table: LoadTable) -> float | None:
        """The service expiry plans with on the best idle eligible worker; None when none."""
        ...

    def cases_s(self, task: CoreTask, table: LoadTable) -> tuple[float, float] | None:
        """``(best_case_s, planned_case_s)`` in one pass; None when no worker is eligible."""
        ...

    def service_s(self, task: CoreTask, worker: WorkerLoad, instead_of: str | None = None
                  ) -> float:
        """Predicted service of ``task`` if it joined ``worker`` now, in the place of the task
        ``instead_of`` where one is given (a preemption's victim, still in the load table)."""
        ...

    def observe(self, task: CoreTask, completion: Completion, now_s: float) -> None: ...

    def figures_version(self, task: CoreTask) -> int:
        """Grows whenever ``cases_s`` of ``task`` may have moved by more than a few percent
        for what is learned (``ServiceEstimator.figures_version``); the workers present are
        the core's to follow."""
        ...

    def bound(self, task: CoreTask, worker: WorkerLoad, now_s: float) -> None:
        """The core has bound ``task`` to ``worker`` (what ``place`` chose, or a quarantined
        task's idle worker)."""
        ...

    def state(self) -> dict[str, Any] | None:
        """What this placement has learned, JSON-friendly; None when it learns nothing."""
        ...

    def restore(self, state: dict[str, Any]) -> int:
        """Take up a saved ``state()``; returns how many learned models it restored."""
        ...

    def learned(self) -> list[dict[str, Any]]:
        """Rows describing the learned models, for status and reports (empty: none)."""
        ...

    def thinly_learned(self, task: CoreTask, table: LoadTable) -> bool:
        """Whether ``cases_s`` of ``task`` rests on a learned figure of some eligible worker
        that few completions back (one the core may probe: ``SchedulerCore.submit``)."""
        ...


class EstimatorPlacement:
    """What every placement shares: a service estimator that answers the best case and learns."""

    estimator: ServiceEstimator

    def best_case_s(self, task: CoreTask, table: LoadTable) -> float | None:
        return min_over_eligible(task, table, self.estimator.idle_service_s)

    def planned_case_s(self, task: CoreTask, table: LoadTable) -> float | None:
        return min_over_eligible(task, table, self.estimator.planned_idle_s)

    def cases_s(self, task: CoreTask, table: LoadTable) -> tuple[float, float] | None:
        # Admission asks for both on every submit: one walk over the groups, not two.
        cases: tuple[float, float] | None = None
        idle_cases = self.estimator.idle_cases_s
        for g in table.groups(task.pool):
            if fits_context(task, g.max_context_tokens):
                best_s, planned_s = idle_cases(task, g)
                if cases is None:
                    cases = (best_s, planned_s)
                elif best_s < cases[0] or planned_s < cases[1]:
                    cases = (min(best_s, cases[0]), min(planned_s, cases[1]))
        return cases

    def service_s(self, task: CoreTask, worker: WorkerLoad, instead_of: str | None = None
                  ) -> float:
        return self.estimator.service_s(task, worker)

    def observe(self, task: CoreTask, completion: Completion, now_s: float) -> None:
        self.estimator.observe(task, completion, now_s)

    def figures_version(self, task: CoreTask) -> int:
        return self.estimator.figures_version(task)

    def bound(self, task: CoreTask, worker: WorkerLoad, now_s: float) -> None:
        return None

    # A placement over fixed priors learns nothing to save; learning ones override these.
    def state(self) -> dict[str, Any] | None:
        return None

    def restore(self, state: dict[str, Any]) -> int:
        return 0

    def learned(self) -> list[dict[str, Any]]:
        return []

    def thinly_learned(self, task: CoreTask, table: LoadTable) -> bool:
        return False


def min_over_eligible(task: CoreTask, table: LoadTable,
                      idle_s: Callable[[CoreTask, WorkerGroup], float]) -> float | None:
    """The least ``idle_s`` over the pool's groups that can hold ``task``; None when none can."""
    best: float | None = None
    for g in table.groups(task.pool):
        if fits_context(task, g.max_context_tokens):
            t = idle_s(task, g)
            if best is None or t < best:
                best = t
    return best


class LeastCompletionTime(EstimatorPlacement):
    """Pick the eligible worker with the earliest predicted finish (wait + service).

    Inside a group of like workers the least loaded one finishes first, so only each group's
    least-loaded free worker is scored.
    """

    def __init__(self, estimator: ServiceEstimator | None = None) -> None:
        self.estimator = estimator or PriorEstimator()

    def place(self, task: CoreTask, table: LoadTable, now_s: float) -> Choice | None:
        best: Choice | None = None
        for group in table.groups(task.pool):
            if not eligible(task, group):
                continue
            worker = group.best_free()
            if worker is None:
                continue
            service_s = self.estimator.service_s(task, worker)
            finish_s = now_s + worker.wait_s() + service_s
            if best is None or ((finish_s, worker.worker_id)
                                < (best.finish_s, best.worker.worker_id)):
                best = Choice(worker, service_s, finish_s)
        return best


class _Baseline(EstimatorPlacement):
    """The baseline placements: engine priors, nothing learned."""

    estimator: ServiceEstimator = PriorEstimator()

    def _choice(self, task: CoreTask, worker: WorkerLoad, now_s: float) -> Choice:
        service_s = self.estimator.service_s(task, worker)
        return Choice(worker, service_s, now_s + worker.wait_s() + service_s)


def _fits(task: CoreTask, w: WorkerLoad) -> bool:
    return w.free_slots > 0 and fits_context(task, w.spec.max_context_tokens)


class FirstFree(_Baseline):
    """The first worker, in joining order, with a free slot (a plain FIFO dispatcher)."""

    def place(self, task: CoreTask, table: LoadTable, now_s: float) -> Choice | None:
        for w in table.ordered(task.pool):
            if _fits(task, w):
                return self._choice(task, w, now_s)
        return None


class RoundRobin(_Baseline):
    """The next worker after the last one picked that has a free slot."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def place(self, task: CoreTask, table: LoadTable, now_s: float) -> Choice | None:
        workers = table.ordered(task.pool)
        start = self._next.get(task.pool, 0)
        for i in range(len(workers)):
            w = workers[(start + i) % len(workers)]
            if _fits(task, w):
                self._next[task.pool] = (start + i + 1) % len(workers)
                return self._choice(task, w, now_s)
        return None


class LeastLoaded(_Baseline):
    """Least predicted backlog per unit of concurrency, ignoring the task itself."""

    def place(self, task: CoreTask, table: LoadTable, now_s: float) -> Choice | None:
        best: WorkerLoad | None = None
        for group in table.groups(task.pool):
            if eligible(task, group):
                w = group.best_free()
                if w is not None and (best is None or _load(w) < _load(best)):
                    best = w
        return None if best is None else self._choice(task, best, now_s)


def _load(w: WorkerLoad) -> tuple[float, int, str]:
    return (w.backlog_s / w.spec.concurrency, len(w.in_flight), w.worker_id)


class PowerOfTwo(_Baseline):
    """Power of two choices on queue length, as Ray Serve's default router does.

    Two distinct workers drawn at random (seeded, so runs repeat); the one with fewer tasks in
    flight wins. When neither has a free slot it draws again, a bounded number of times, then
    falls back to any free worker.
    """

    def __init__(self, seed: int = 0, tries: int = 4) -> None:
        self._rng = random.Random(seed)
        self.tries = tries

    def place(self, task: CoreTask, table: LoadTable, now_s: float) -> Choice | None:
        workers = table.ordered(task.pool)
        if not workers:
            return None
        for _ in range(self.tries):
            if len(workers) == 1:
                pair = [workers[0]]
            else:
                pair = [workers[i] for i in self._rng.sample(range(len(workers)), 2)]
            free = [w for w in pair if _fits(task, w)]
            if free:
                w = min(free, key=lambda w: (len(w.in_flight), w.worker_id))
                return self._choice(task, w, now_s)
        for w in workers:
            if _fits(task, w):
                return self._choice(task, w, now_s)
        return None
