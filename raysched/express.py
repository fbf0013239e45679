"""The express lane: a driver's urgent single tasks straight to a CPU worker it holds a lease on.

A task through the scheduler makes two round trips (driver to scheduler, scheduler to worker);
on an idle system that is the whole of its added latency, most of it the central actor's own
floor (``benchmarks/overhead.py`` part (c): a bare asyncio relay adds 1.5-2.4 ms over a direct
call on a 2-core machine). Ray Serve's handles route in the caller's process for the same
reason. Here the scheduler keeps the deadline queue and the placement for everything else, and
lends an idle worker to one driver at a time:

- ``Client.run`` of one CRITICAL or HIGH task for a CPU pool, with a payload small enough to
  travel inline, goes straight to the leased worker (``CPUActor.express``) when the lease says
  the task's kind can meet its deadline there and no other task of the driver is on the lease
  (a second would wait behind the first); the worker answers with its report and the driver
  builds the Result. Anything else, and any doubt, goes through the scheduler as before.
- A lease exists only while its pool has nothing queued, and never on the pool's last worker
  free for placement. When work waits and no slot is free, the scheduler ends the lease at the
  worker (after the express task running there, if any) and places work on it again; a task
  sent under an ended lease is refused by the worker unrun, and the driver submits it to the
  scheduler. A lease not renewed for ``service.LEASE_TTL_S`` ends too.
- Every express task ends in one Result, as any: the driver holds it while it runs, so a lost
  worker means the driver submits it to the scheduler (which may run it again elsewhere, as it
  would any task whose worker was lost; the lost attempt counts in ``Result.attempts``), and a
  cancel or ``close`` ends its handle here once its worker has noted not to start it (one not
  started by then never starts; one running runs to its end, its output dropped). The
  scheduler learns of each one after it ends (``SchedulerActor.express_done``, sent with the
  driver's next poll), cancelled ones as cancelled: its counts, metrics and learned models
  include them. A worker whose lease does not end within the hang timeout (an express task
  that hangs) is killed as a hung worker is.

This module holds the driver's side of the leases; ``raysched.client`` uses it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from raysched.core.types import Priority

# The classes that take the express lane: the ones whose latency it is for. Lower classes go
# through the queue, where they never hold a worker that urgent work may need.
EXPRESS_CLASSES = frozenset({Priority.CRITICAL, Priority.HIGH})
# A driver renews its lease (fresh service estimates for admission) this often while it uses
# it, in the background: well inside the scheduler's ``LEASE_TTL_S``.
LEASE_RENEW_S = 2.0
# After the scheduler had no lease to give, or a lease ended, ask again after this long.
LEASE_RETRY_S = 1.0
# A lease without estimates for a kind is asked for again this soon: the scheduler has them
# once it has seen a task of that kind (the first goes through it).
KIND_RETRY_S = 0.05


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as the driver holds it: the worker's handle, and per task kind the
    ``(best_case_s, planned_case_s)`` the scheduler's admission and expiry use."""

    lease_id: str
    worker_id: str
    worker: Any
    cases: dict[str, tuple[float, float]]
    got_s: float  # time.monotonic() when granted or renewed


class ExpressLeases:
    """A driver's leases, one per pool at most, asked for and renewed in the background: a
    lookup never waits for the scheduler.

    ``actor`` is read through ``get_actor`` at each ask (a client's handle changes when the
    scheduler restarts)."""

    def __init__(self, get_actor: Any, client_id: str) -> None:
        self._get_actor = get_actor
        self._client_id = client_id
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        # pool -> the ask on its way (an ObjectRef), and when the last one was sent
        self._asking: dict[str, Any] = {}
        self._asked_s: dict[str, float] = {}
        # Reports of express tasks that ended, for the scheduler (``take_reports``)
        self._reports: list[tuple[Any, ...]] = []
        self._busy: set[str] = set()  # the leases a task is on now

    def take(self, pool: str, kind: str) -> Lease | None:
        """The lease on ``pool`` for one task of ``kind``, now: None when there is none, it has
        no estimates for ``kind``, or a task of this driver is on it already (the worker runs
        one at a time: a second would wait behind the first while other workers may be free;
        it goes through the scheduler). The lease is this task's until ``give_back`` or
        ``drop``."""
        lease = self.get(pool, kind)
        if lease is None or kind not in lease.cases:
            return None
        with self._lock:
            if lease.lease_id in self._busy:
                return None
            self._busy.add(lease.lease_id)
        return lease

    def give_back(self, pool: str, lease: Lease) -> None:
        """The task that took ``lease`` has its answer: the next may take it."""
        with self._lock:
            self._busy.discard(lease.lease_id)

    def get(self, pool: str, kind: str) -> Lease | None:
        """The lease on ``pool`` if one is held now. Takes up an answer that has come, and
        sends an ask when there is none, or it is due for renewal, or it has no estimates for
        ``kind`` yet (the scheduler had not seen one when it answered), and none is on its
        way."""
        import ray

        now = time.monotonic()
        with self._lock:
            ask = self._asking.get(pool)
            if ask is not None:
                ready, _ = ray.wait([ask], timeout=0)
                if ready:
                    del self._asking[pool]
                    self._take_answer(pool, ask, now)
            lease = self._leases.get(pool)
            since_s = now - self._asked_s.get(pool, -LEASE_RETRY_S)
            due = (since_s >= LEASE_RETRY_S if lease is None
                   else since_s >= KIND_RETRY_S if kind not in lease.cases
                   else now - lease.got_s >= LEASE_RENEW_S)
            if due and pool not in self._asking:
                self._asking[pool] = self._get_actor().lease.remote(self._client_id, pool)
                self._asked_s[pool] = now
            return lease

    def _take_answer(self, pool: str, ask: Any, now: float) -> None:
        import ray

        try:
            answer = ray.get(ask)
        except Exception:  # noqa: BLE001 - a scheduler restarting: no lease for now
            answer = None
        if answer is None:
            self._leases.pop(pool, None)
            return
        lease_id, worker_id, worker, cases = answer
        self._leases[pool] = Lease(lease_id, worker_id, worker, cases, now)

    def drop(self, pool: str, lease: Lease) -> None:
        """``lease`` has ended (its worker refused a task under it, or is gone)."""
        with self._lock:
            self._busy.discard(lease.lease_id)
            held = self._leases.get(pool)
            if held is not None and held.lease_id == lease.lease_id:
                del self._leases[pool]
                self._asked_s[pool] = time.monotonic()

    def held(self) -> bool:
        with self._lock:
            return bool(self._leases or self._asking)

    def report(self, report: tuple[Any, ...]) -> None:
        """Keep one ended express task's report for the scheduler
        (``SchedulerService.express_done`` says its fields)."""
        with self._lock:
            self._reports.append(report)

    def take_reports(self) -> list[tuple[Any, ...]]:
        if not self._reports:
            return []
        with self._lock:
            taken, self._reports = self._reports, []
        return taken

    def clear(self) -> None:
        """Forget every lease (the client closes; the scheduler ends them)."""
        with self._lock:
            self._leases.clear()
            self._asking.clear()
