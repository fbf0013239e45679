"""Load tables: what every worker holds now, and the pool totals.

Per worker: tasks in flight (with their predicted finish), free slots, predicted backlog seconds,
and busy time for utilisation. Workers of a pool that share a service prior and a context limit
form a group; inside a group the best worker for a new task is simply the least loaded one, so
each group keeps a lazy heap keyed by ``(predicted wait, in_flight, backlog_s, worker_id)`` (a
worker with room in its batch has no wait; a full one waits for its backlog) and placement looks at
one head per group instead of scanning the pool. That keeps a decision O(groups * log workers).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from raysched.core.types import ServicePrior, WorkerSpec


@dataclass(slots=True)
class WorkerLoad:
    """One worker's row of the load table."""

    spec: WorkerSpec
    in_flight: dict[str, float] = field(default_factory=dict)  # task_id -> predicted service s
    backlog_s: float = 0.0
    busy_s: float = 0.0
    busy_since_s: float | None = None
    added_s: float = 0.0
    completed: int = 0
    version: int = 0
    # A task that must run alone (quarantined): while it is in flight, nothing else is placed.
    alone_task: str = ""
    # The express lease holding it (``LoadTable.hold``): while set, nothing is placed on it.
    held: str = ""
    # The group it belongs to, set when the table adds it; kept here so the hot path does not
    # hash the group key on every start and finish.
    group: WorkerGroup = None  # type: ignore[assignment]

    @property
    def worker_id(self) -> str:
        return self.spec.worker_id

    @property
    def free_slots(self) -> int:
        free = self.spec.slots - len(self.in_flight)
        return free if free > 0 and not self.alone_task and not self.held else 0

    def wait_s(self) -> float:
        """Predicted time before a newly placed task starts running."""
        if len(self.in_flight) < self.spec.concurrency:
            return 0.0
        return self.backlog_s / self.spec.concurrency

    def utilization(self, now_s: float) -> float:
        """Fraction of time since the worker joined that it had work in flight."""
        busy = self.busy_s + (now_s - self.busy_since_s if self.busy_since_s is not None else 0.0)
        span = now_s - self.added_s
        return min(1.0, busy / span) if span > 0 else 0.0


GroupKey = tuple[ServicePrior, int]


class WorkerGroup:
    """Workers of one pool with the same prior and context limit."""

    def __init__(self, key: GroupKey) -> None:
        self.prior, self.max_context_tokens = key
        self.members: dict[str, WorkerLoad] = {}
        # Tasks bound behind the work their member runs (in prefetch slots), over its members
        self.waiting = 0
        self._heap: list[_HeapKey] = []

    def offer(self, w: WorkerLoad) -> None:
        """(Re)publish a worker's current load; older entries of it become stale."""
        w.version += 1
        in_flight = len(w.in_flight)
        spec = w.spec
        if spec.slots > in_flight and not w.alone_task and not w.held:  # free_slots, inlined
            concurrency = spec.concurrency
            # _key(w), inlined: this runs on every start and finish.
            wait_s = 0.0 if in_flight < concurrency else w.backlog_s / concurrency
            heap = self._heap
            heapq.heappush(heap, (wait_s, in_flight, w.backlog_s, spec.worker_id, w.version, w))
            if len(heap) > 4 * len(self.members) + 64:
                self._heap = [_key(m) for m in self.members.values() if m.free_slots > 0]
                heapq.heapify(self._heap)

    def best_free(self) -> WorkerLoad | None:
        """The least-loaded member with a free slot, or None."""
        heap = self._heap
        while heap:
            top = heap[0]
            w = top[5]
            # A worker removed from the group has its version moved on (``LoadTable.remove``)
            if w.version == top[4] and w.free_slots > 0:
                return w
            heapq.heappop(heap)
        return None


# (predicted wait, in flight, backlog, worker id, version, the worker): the first five are
# unique per entry, so the worker itself is never compared.
_HeapKey = tuple[float, int, float, str, int, WorkerLoad]


def _key(w: WorkerLoad) -> _HeapKey:
    return (w.wait_s(), len(w.in_flight), w.backlog_s, w.worker_id, w.version, w)


class LoadTable:
    """All workers, grouped by pool."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerLoad] = {}
        self._groups: dict[str, dict[GroupKey, WorkerGroup]] = {}
        self._task_worker: dict[str, str] = {}
        self._free_by_pool: dict[str, int] = {}
        self._pool_order: dict[str, list[WorkerLoad]] = {}  # in the order workers joined

    def add(self, spec: WorkerSpec, now_s: float) -> WorkerLoad:
        assert spec.worker_id not in self.workers, f"worker {spec.worker_id} added twice"
        w = WorkerLoad(spec, added_s=now_s)
        self.workers[spec.worker_id] = w
        self._free_by_pool[spec.pool] = self._free_by_pool.get(spec.pool, 0) + spec.slots
        self._pool_order.setdefault(spec.pool, []).append(w)
        group = w.group = self._group_of(spec)
        group.members[spec.worker_id] = w
        group.offer(w)
        return w

    def remove(self, worker_id: str, now_s: float) -> list[str]:
        """Drop a worker at once; returns the ids of the tasks it had in flight."""
        w = self.workers.pop(worker_id)
        self._close_busy(w, now_s)
        self._free_by_pool[w.spec.pool] -= w.free_slots
        self._pool_order[w.spec.pool].remove(w)
        group = w.group
        del group.members[worker_id]
        w.version += 1  # its entries in the group's heap are stale from now
        if not group.members:
            del self._groups[w.spec.pool][(w.spec.prior, w.spec.max_context_tokens)]
        lost = list(w.in_flight)
        for task_id in lost:
            del self._task_worker[task_id]
        if len(lost) > w.spec.concurrency:
            group.waiting -= len(lost) - w.spec.concurrency
        return lost

    def start(self, task_id: str, worker_id: str, service_s: float, now_s: float,
              alone: bool = False) -> None:
        """Bind ``task_id`` to a free slot of ``worker_id``; ``alone``: the worker must be idle
        and takes nothing else until this task finishes."""
        w = self.workers[worker_id]
        before = w.free_slots
        assert before > 0, f"worker {worker_id} has no free slot"
        assert not alone or not w.in_flight, f"worker {worker_id} is not idle"
        if not w.in_flight:
            w.busy_since_s = now_s
        w.in_flight[task_id] = service_s
        if len(w.in_flight) > w.spec.concurrency:
            w.group.waiting += 1
        w.backlog_s += service_s
        if alone:
            w.alone_task = task_id
        # One slot fewer; all of them when it must run alone.
        self._free_by_pool[w.spec.pool] -= before if alone else 1
        self._task_worker[task_id] = worker_id
        w.group.offer(w)

    def finish(self, task_id: str, now_s: float, completed: bool = True) -> WorkerLoad | None:
        """Free the slot ``task_id`` held; None when it held none (already freed or unknown).

        ``completed``: count it as work the worker did (False for a task taken back unrun or
        preempted)."""
        worker_id = self._task_worker.pop(task_id, None)
        if worker_id is None:
            return None
        w = self.workers[worker_id]
        before = w.free_slots
        if len(w.in_flight) > w.spec.concurrency:
            w.group.waiting -= 1
        backlog_s = w.backlog_s - w.in_flight.pop(task_id)
        w.backlog_s = backlog_s if backlog_s > 0.0 else 0.0
        if w.alone_task == task_id:
            w.alone_task = ""
        w.completed += completed
        self._free_by_pool[w.spec.pool] += w.free_slots - before
        if not w.in_flight:
            self._close_busy(w, now_s)
            w.backlog_s = 0.0  # clear float residue
        w.group.offer(w)
        return w

    def set_slots(self, worker_id: str, slots: int) -> None:
        """Change how many tasks ``worker_id`` may hold (at least its concurrency). Tasks it
        holds beyond a lowered count stay; it takes no new ones until it is under it."""
        w = self.workers[worker_id]
        slots = max(slots, w.spec.concurrency)
        if slots == w.spec.slots:
            return
        before = w.free_slots
        w.spec = replace(w.spec, slots=slots)
        self._free_by_pool[w.spec.pool] += w.free_slots - before
        self._group_of(w.spec).offer(w)

    def free_slots(self, pool: str) -> int:
        return self._free_by_pool.get(pool, 0)

    def waiting(self, pool: str) -> int:
        """Tasks of ``pool`` bound behind the work their worker runs (in prefetch slots)."""
        return sum(g.waiting for g in self.groups(pool))

    def hold(self, worker_id: str, lease_id: str) -> None:
        """Take an idle worker out of placement for an express lease (its slots are the
        lease's until ``release``)."""
        w = self.workers[worker_id]
        assert not w.in_flight and not w.held, f"worker {worker_id} is not idle"
        self._free_by_pool[w.spec.pool] -= w.free_slots
        w.held = lease_id
        w.group.offer(w)

    def release(self, worker_id: str) -> str:
        """Give a held worker back to placement; returns the lease it held ("" for none)."""
        w = self.workers.get(worker_id)
        if w is None or not w.held:
            return ""
        lease_id, w.held = w.held, ""
        self._free_by_pool[w.spec.pool] += w.free_slots
        w.group.offer(w)
        return lease_id

    def idle_worker(self, pool: str, fits: Callable[[WorkerLoad], bool]) -> WorkerLoad | None:
        """The first worker of ``pool``, in joining order, with nothing in flight that ``fits``."""
        for w in self.ordered(pool):
            if not w.in_flight and fits(w):
                return w
        return None

    def worker_of(self, task_id: str) -> str | None:
        return self._task_worker.get(task_id)

    def ordered(self, pool: str) -> list[WorkerLoad]:
        """The pool's workers in the order they joined (do not modify)."""
        return self._pool_order.get(pool, [])

    def groups(self, pool: str) -> Iterable[WorkerGroup]:
        groups = self._groups.get(pool)
        return groups.values() if groups is not None else ()

    def pool_workers(self, pool: str) -> Iterator[WorkerLoad]:
        for group in self.groups(pool):
            yield from group.members.values()

    def _group_of(self, spec: WorkerSpec) -> WorkerGroup:
        key = (spec.prior, spec.max_context_tokens)
        pool = self._groups.setdefault(spec.pool, {})
        group = pool.get(key)
        if group is None:
            group = pool[key] = WorkerGroup(key)
        return group

    @staticmethod
    def _close_busy(w: WorkerLoad, now_s: float) -> None:
        if w.busy_since_s is not None:
            w.busy_s += now_s - w.busy_since_s
            w.busy_since_s = None
