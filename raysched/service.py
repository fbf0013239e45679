"""The scheduler's bookkeeping, without Ray: who is owed which Result, and the log that keeps it.

``SchedulerService`` sits between the drivers' calls and ``SchedulerCore``. It holds the tasks
accepted and not yet ended (with the driver that submitted each), a mailbox of finished
``Result``s per driver, the results handed out but not yet acknowledged, and the task log that
lets a restarted scheduler take all of that up again. It converts the core's ``Outcome``s into
the drivers' ``ResultRecord``s and the core's assignments into the ``WorkItem``s workers run.
It handles plain records only (``raysched.core.protocol``): the drivers validate at the edge.

It also keeps the scheduler's facts that need no Ray: its pools, what each registered worker
said about itself, and the startup notes, from which it answers ``stats``.

It reads the time only through the clock it is given and does no I/O but the task log's file,
so the unit tests drive it with a fake clock and a real core; the Ray actor
(``raysched.scheduler``) is the asyncio glue around it.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from raysched.config import PoolConfig
from raysched.core import CoreStats, Outcome, SchedulerCore, WorkerSpec
from raysched.core.protocol import (
    ABORTED,
    ByRef,
    Completion,
    ResultRecord,
    TaskRecord,
    WorkerInfo,
    WorkItem,
)
from raysched.core.types import Priority, Status
from raysched.supervisor import PoolSupervisor
from raysched.wal import Pending, TaskLog

log = logging.getLogger("raysched")
# How long a task taken up from the task log waits for its driver to send its payload again
# (one that went by reference): as long as a driver waits for a restarting scheduler
# (``Client.reconnect_s``).
PAYLOAD_RESEND_S = 60.0
# An express lease its driver has not asked for again in this long is ended: a driver that
# uses its lease renews it every ``raysched.client.LEASE_RENEW_S``; one that stopped (or died)
# holds a worker idle for no one.
LEASE_TTL_S = 10.0


@dataclass(frozen=True, slots=True)
class Lease:
    """An express lease (``SchedulerService.lease``): ``worker_id`` runs the tasks its driver
    sends it directly under ``lease_id``; ``cases`` maps each task kind the pool has seen to
    ``(best_case_s, planned_case_s)`` as admission and expiry use them."""

    lease_id: str
    worker_id: str
    pool: str
    cases: dict[str, tuple[float, float]]


@dataclass(frozen=True, slots=True)
class Batch:
    """The work one dispatch pass sends one worker, in a single call.

    ``expected_s`` is the predicted time from the pass until the last of its tasks ends: what
    the caller scales to decide how long the worker may stay silent before it counts as hung.
    """

    worker_id: str
    items: list[WorkItem]
    expected_s: float
    # The worker held nothing else when these were bound: the wait for its first report is
    # the round trip plus the work, so it measures the round trip.
    idle: bool = False


@dataclass(frozen=True, slots=True)
class Dispatch:
    """What one dispatch pass asks of the workers.

    ``take_back``: per worker, tasks the core took back from it to make room for more urgent
    work; the worker should drop them (their reports, if any, are ignored by the core), and
    they run again elsewhere. ``batches``: the new work, one call per worker.
    """

    take_back: dict[str, list[str]]
    batches: list[Batch]
    # (worker_id, lease_id) of express leases to end at their workers, then ``release``.
    revoke: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What ``cancel`` did: per task id asked, whether this call ended it; and, per worker, the
    ended tasks that were running there (the worker may stop them early)."""

    ended: list[bool]
    running_on: dict[str, list[str]] = field(default_factory=dict)


class PrefetchDepth:
    """How many tasks a one-at-a-time worker should hold: enough to hide its dispatch round
    trip behind the work it has, ``ceil(round_trip / service) + 1``, between ``MIN_DEPTH`` and
    ``MAX_DEPTH``; both measured as exponentially weighted means (weight ``DEPTH_WEIGHT``).

    A deeper prefetch binds tasks earlier, which late binding exists to avoid; it stays safe
    because the worker checks each task's latest start and cancellation before it starts it,
    and the core may take back a task still waiting in a prefetch slot for urgent work.
    """

    MIN_DEPTH = 2  # the one running, and one waiting to hide the round trip
    MAX_DEPTH = 64
    DEPTH_WEIGHT = 0.1

    def __init__(self, slots: int, adapt: bool = True) -> None:
        self.slots = slots
        self.adapt = adapt  # False: the config fixed the slots; the round trip is still kept
        self.round_trip_s: float | None = None
        self.service_s: float | None = None

    def service(self, service_s: float) -> None:
        self.service_s = _ewma(self.service_s, max(service_s, 1e-6), self.DEPTH_WEIGHT)

    def round_trip(self, round_trip_s: float) -> int | None:
        """Take one measured round trip; the new slot count when it changed, else None."""
        self.round_trip_s = _ewma(self.round_trip_s, max(round_trip_s, 0.0), self.DEPTH_WEIGHT)
        if self.service_s is None or not self.adapt:
            return None
        want = math.ceil(self.round_trip_s / self.service_s) + 1
        slots = min(self.MAX_DEPTH, max(self.MIN_DEPTH, want))
        if slots == self.slots:
            return None
        self.slots = slots
        return slots


class ByReferenceCounts:
    """How many payloads and outputs went by reference (so never through this process's
    messages), and their bytes: ``counts`` maps ``payloads``, ``payload_bytes``, ``outputs``
    and ``output_bytes`` to totals since the start."""

    def __init__(self) -> None:
        self.counts = {"payloads": 0, "payload_bytes": 0, "outputs": 0, "output_bytes": 0}

    def count(self, what: str, size_bytes: int) -> None:
        self.counts[what] += 1
        self.counts[what[:-1] + "_bytes"] += size_bytes


def _ewma(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1.0 - weight) * old + weight * new


@dataclass(slots=True)
class _Pending:
    task: TaskRecord
    client_id: str


class SchedulerService:
    """Accepted tasks, mailboxes, acknowledgements and the task log around a ``SchedulerCore``.

    Every task a driver submits ends in exactly one result in that driver's mailbox (or, when
    it is refused at once, in the reply to ``submit``; or, when a call waits for it, ``claim``,
    in that call's answer). A result stays owed, and in the task log, until the driver
    acknowledges it; a scheduler restarted over the same log runs the accepted tasks again and
    delivers the owed results again.

    ``clock`` gives the time in seconds on the scheduler's clock (the one ``deadline_s`` is on).
    ``on_result(client_id)`` is called whenever a result lands in that driver's mailbox, so a
    waiting ``poll`` can wake; ``on_outcome(outcome)`` is called once per task that ends (for
    metrics), refusals at submit included.
    """

    def __init__(self, core: SchedulerCore, clock: Callable[[], float], *,
                 on_result: Callable[[str], None] | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None,
                 max_start_failures: int = 3) -> None:
        self.core = core
        self.clock = clock
        # Which workers each pool is owed, and when a pool has no worker coming.
        self.supervisor = PoolSupervisor(clock, max_start_failures)
        self.on_result = on_result
        self.on_outcome = on_outcome
        self.task_log: TaskLog | None = None
        self.started_s = clock()
        self.pools: dict[str, PoolConfig] = {}
        self.worker_info: dict[str, WorkerInfo] = {}
        self.notes: list[str] = []  # what an operator should know: simulated engines, restarts
        self._pending: dict[str, _Pending] = {}
        self._depth: dict[str, PrefetchDepth] = {}
        self._mailboxes: dict[str, list[ResultRecord]] = defaultdict(list)
        # Results handed to drivers but not yet acknowledged: delivered again after a restart.
        self._unacked: dict[str, tuple[str, ResultRecord]] = {}
        # Accepted tasks taken up from the log whose payloads went by reference: the log holds
        # no object refs, so each waits for its driver to send it again (``submit``), at most
        # ``PAYLOAD_RESEND_S``. task_id -> (client_id, task, deadline_s, since_s).
        self._awaiting: dict[str, tuple[str, TaskRecord, float, float]] = {}
        self.by_reference = ByReferenceCounts()
        # Results whose outputs went by reference, not yet acknowledged: task_id -> the task's
        # log entry (client_id, task, deadline_s), kept through compaction of the log.
        self._rerun: Pending = {}
        # What tasks taken back from their workers had generated (``WorkItem.progress``):
        # task_id -> (token ids, tokens). Not in the log: after a restart a task starts again.
        self._progress: dict[str, tuple[tuple[int, ...], int]] = {}
        # Results a waiting call takes instead of the mailbox (``claim``): task_id -> receiver.
        self._claims: dict[str, Callable[[ResultRecord], None]] = {}
        # Express leases: worker_id -> (client_id, lease, when its driver last asked for it).
        self._leases: dict[str, tuple[str, Lease, float]] = {}

    # -- the task log ------------------------------------------------------------------------

    def open_log(self, task_log: TaskLog) -> str | None:
        """Keep this service's promises in ``task_log`` from now on, first taking up those that a
        previous scheduler left in it. Returns a note of what was taken up, or None.

        Results not acknowledged go back into their drivers' mailboxes. Tasks accepted and not
        ended are submitted to the core again with their original deadlines, the times each was
        sent to a worker counted as its attempts; one the core now refuses (its deadline can no
        longer be met, say) ends in a rejected result that says so.
        A task whose payload went by reference waits for its driver to send it again; one whose
        result's output went by reference runs again (that output lived in the old process).
        """
        self.task_log = task_log
        pending, unacked, runs = task_log.replay()
        if not pending and not unacked:
            return None
        now = self.clock()
        for task_id, (client_id, result) in unacked.items():
            self._unacked[task_id] = (client_id, result)
            self._post(client_id, result)
        rerun = 0
        for task_id, (client_id, task, deadline_s) in pending.items():
            if isinstance(task.payload, ByRef) and task.payload.ref is None:
                self._awaiting[task_id] = (client_id, task, deadline_s, now)
                continue
            self._pending[task_id] = _Pending(task, client_id)
            core_task = replace(task.to_core(now), deadline_s=deadline_s)
            accepted = True
            for outcome in self.core.submit(core_task, now):
                if outcome.task_id == task_id and runs.get(task_id):
                    accepted = False  # it ran (it may have): its Result says so
                    self.end([replace(outcome, attempts=runs[task_id],
                                      reason=f"the scheduler restarted while it ran, and it "
                                             f"cannot run again: {outcome.reason}")])
                elif outcome.task_id == task_id:
                    accepted = False
                    self.end([replace(outcome,
                                      reason=f"after a scheduler restart: {outcome.reason}")])
                else:
                    self.end([outcome])
            if accepted:
                rerun += 1
                if runs.get(task_id):
                    self.core.ran_before(task_id, runs[task_id],
                                         "the scheduler restarted while it ran")
        task_log.flush()
        waiting = len(self._awaiting)
        note = (f"restarted: {rerun} accepted tasks queued to run again, "
                + (f"{waiting} waiting for their drivers to send their payloads again, "
                   if waiting else "")
                + f"{len(pending) - rerun - waiting} reported as rejected, "
                  f"{len(unacked)} results to deliver")
        log.warning(note)
        self.notes.append(note)
        return note

    def unflushed(self) -> bool:
        """Whether the task log holds results or acknowledgements not yet written."""
        return self.task_log is not None and self.task_log.buffered()

    def flush(self) -> None:
        """Write what the log has buffered, and compact it once it has grown large."""
        if self.task_log is None:
            return
        self.task_log.flush()
        if self.task_log.needs_compaction():
            self.compact()

    def compact(self) -> None:
        """Rewrite the task log as just what is still owed: pending tasks and unacked results."""
        if self.task_log is None:
            return
        pending: Pending = {tid: (p.client_id, p.task, self.core.deadline_of(tid))
                            for tid, p in self._pending.items()}
        pending.update({tid: (client_id, task, deadline_s) for tid, (client_id, task, deadline_s, _)
                        in self._awaiting.items()})
        pending.update(self._rerun)
        self.task_log.compact(pending, dict(self._unacked))

    # -- drivers -----------------------------------------------------------------------------

    def submit(self, client_id: str, tasks: list[TaskRecord], *, flush: bool = True
               ) -> list[ResultRecord | None]:
        """Admit a batch of validated tasks. Returns, per task, a rejection record or None.

        Idempotent per driver: a task id this driver already submitted and that still runs is
        accepted again as a no-op, so a retried call after a lost reply does no harm; one that
        has ended and is not yet acknowledged gets its Result again in the reply (the driver
        keeps the first it receives); the same id from another driver is rejected. Accepted
        tasks are in the task log before this returns, so a restart from here on runs or
        reports every one; with ``flush=False``, at the next ``flush``, which the caller makes
        before it answers the driver (so the log's work can wait until the tasks are sent).
        """
        now = self.clock()
        out: list[ResultRecord | None] = []
        accepted: list[tuple[TaskRecord, float]] = []
        told = False
        for task in tasks:
            deadline_s: float | None = None
            awaited = self._awaiting.get(task.task_id)
            if awaited is not None and awaited[0] == client_id:
                # Sent again after a restart: it keeps the deadline it was accepted with.
                del self._awaiting[task.task_id]
                deadline_s, awaited = awaited[2], None
            owner = self._pending.get(task.task_id)
            done = self._unacked.get(task.task_id)
            if owner and owner.client_id == client_id:
                out.append(None)  # a repeated call: already accepted, its Result will come
                continue
            if done and done[0] == client_id:
                out.append(done[1])  # it has ended: its Result, again
                told = True
                continue
            # A cancelled task the core still tracks (its worker has not reported) holds its id.
            if owner or done or awaited or self.core.state_of(task.task_id) is not None:
                out.append(self._refusal(task, f"task id {task.task_id!r} is already in the "
                                               f"scheduler", now))
                continue
            if task.num_gpus:
                task, why = self._pools_with_gpus(task)
                if why:
                    out.append(self._refusal(task, why, now))
                    continue
            core_task = task.to_core(now)
            if deadline_s is not None:
                core_task = replace(core_task, deadline_s=deadline_s)
            refusal: ResultRecord | None = None
            ended_here = False
            for outcome in self.core.submit(core_task, now):
                if outcome.task_id == task.task_id and deadline_s is not None:
                    # Accepted before the restart, so in the log: it ends there too, and its
                    # result comes through the mailbox like any accepted task's.
                    self._pending[task.task_id] = _Pending(task, client_id)
                    self.end([replace(outcome,
                                      reason=f"after a scheduler restart: {outcome.reason}")])
                    ended_here = True
                elif outcome.task_id == task.task_id:
                    refusal = self._result(outcome, task.kind)
                    self._record(outcome)
                else:  # a lower-class task shed from a full queue to make room
                    self.end([outcome])
            if ended_here:
                out.append(None)
                continue
            if refusal is None:
                self._pending[task.task_id] = _Pending(task, client_id)
                if isinstance(task.payload, ByRef):
                    self.by_reference.count("payloads", task.payload.size_bytes)
                accepted.append((task, core_task.deadline_s))
            out.append(refusal)
        if self.task_log is not None and (accepted or told):
            if accepted:
                self.task_log.accepted(client_id, accepted, later=not flush)
            if flush:
                self.task_log.flush()  # what a driver is told (a Result again, too) is on record
        return out

    def _pools_with_gpus(self, task: TaskRecord) -> tuple[TaskRecord, str]:
        """``task`` left with the pools it names whose workers hold the GPUs it needs
        (``PoolConfig.worker_gpus``), in its order, and ""; or, when none does, the task as it
        came and why it is refused. A pool this scheduler does not serve is left for admission
        to refuse by name."""
        named = (task.pool, *task.alternatives)
        fit = [p for p in named if p not in self.pools
               or self.pools[p].worker_gpus >= task.num_gpus]
        if not fit:
            most = ", ".join(f"{p}: {self.pools[p].worker_gpus:g}" for p in named)
            return task, (f"needs {task.num_gpus:g} GPUs on its worker; a worker holds at most "
                          f"({most})")
        return replace(task, pool=fit[0], alternatives=tuple(fit[1:])), ""

    def has_results(self, client_id: str) -> bool:
        """Whether ``client_id``'s mailbox holds results to take."""
        return bool(self._mailboxes.get(client_id))

    def take(self, client_id: str, max_results: int = 10_000) -> list[ResultRecord]:
        """Up to ``max_results`` of ``client_id``'s finished results, oldest first.

        They stay owed (and are delivered again after a restart) until acknowledged. The log is
        flushed first, so what a driver is told is on record.
        """
        box = self._mailboxes.get(client_id)
        if not box:
            return []
        taken, self._mailboxes[client_id] = box[:max_results], box[max_results:]
        if self.task_log is not None:
            self.task_log.flush()
        return taken

    def claim(self, task_id: str, receive: Callable[[ResultRecord], None]) -> bool:
        """Hand ``task_id``'s result to ``receive`` when it ends, instead of to its driver's
        mailbox (a call that waits for it answers with it). The result is owed until
        acknowledged, as any. False, and nothing claimed, when the task is not running here (it
        has ended: its result is in the mailbox already)."""
        if task_id not in self._pending:
            return False
        self._claims[task_id] = receive
        return True

    def unclaim(self, task_id: str, receive: Callable[[ResultRecord], None]) -> None:
        """The call that claimed ``task_id`` with ``receive`` stopped waiting: its result goes
        to the mailbox after all (a later claim by another call stays)."""
        if self._claims.get(task_id) is receive:
            del self._claims[task_id]

    def post(self, client_id: str, result: ResultRecord) -> None:
        """Put ``result`` in ``client_id``'s mailbox (a claimed result its call could not
        answer with: it stopped waiting, or failed)."""
        self._mailboxes[client_id].append(result)
        if self.on_result is not None:
            self.on_result(client_id)

    def ack(self, task_ids: list[str], client_id: str | None = None) -> None:
        """The driver has received these results: they are no longer owed. With ``client_id``,
        only results owed to that driver count: an id it was refused at submit (another
        driver's, say) or one it submitted again since acknowledges nothing."""
        done = []
        for task_id in task_ids:
            owed = self._unacked.get(task_id) or self._rerun.get(task_id)
            if owed is None or (client_id is not None and owed[0] != client_id):
                continue
            self._unacked.pop(task_id, None)
            self._rerun.pop(task_id, None)
            done.append(task_id)
        if done and self.task_log is not None:
            self.task_log.acked(done)

    def cancel(self, task_ids: list[str], client_id: str | None = None) -> Cancellation:
        """Cancel queued or running tasks; each one ended gets a ``cancelled`` Result.

        ``client_id``: the driver asking; it may cancel only the tasks it submitted (another
        driver's, or one it submitted under an id already taken and was refused, is not
        ended). None: any task (the scheduler's own, an operator's).

        A running task's worker slot stays taken until the worker reports (the core drops the
        report); ``running_on`` lets the caller ask those workers to stop early.
        """
        now = self.clock()
        ended: list[bool] = []
        running_on: dict[str, list[str]] = defaultdict(list)
        for task_id in task_ids:
            if client_id is not None and self._owner(task_id) not in (client_id, None):
                ended.append(False)
                continue
            if task_id in self._awaiting:  # waiting for its payload after a restart
                self._end_awaiting(task_id, Status.CANCELLED, "cancelled by the caller", now)
                ended.append(True)
                continue
            worker_id = self.core.table.worker_of(task_id)
            outcome = self.core.cancel(task_id, now)
            ended.append(outcome is not None)
            if outcome is not None:
                self.end([outcome])
                if worker_id is not None:
                    running_on[worker_id].append(task_id)
        return Cancellation(ended, dict(running_on))

    def _owner(self, task_id: str) -> str | None:
        """The client that submitted ``task_id`` and is owed its Result; None when no client
        is (unknown, or ended and told)."""
        pending = self._pending.get(task_id)
        if pending is not None:
            return pending.client_id
        awaited = self._awaiting.get(task_id)
        return awaited[0] if awaited is not None else None

    # -- pools and workers -------------------------------------------------------------------

    def add_pool(self, pool: PoolConfig) -> None:
        """A pool the scheduler serves; its workers come later, through ``add_worker``, as
        ``supervisor.to_start()`` asks for them."""
        self.pools[pool.name] = pool
        self.core.add_pool(pool.name)
        self.supervisor.add_pool(pool.name, int(pool.replicas))
        reason = self.supervisor.down_reason(pool.name)
        if reason:
            self.notes.append(f"pool {pool.name} cannot serve: {reason}")
            self.end(self.core.pool_down(pool.name, reason, self.clock()))

    def worker_starting(self, pool: str, worker_id: str) -> None:
        """A worker of ``pool`` is being started."""
        self.supervisor.starting(pool, worker_id)

    def start_failed(self, pool: str, worker_id: str, error: str) -> None:
        """A worker died before it registered. When that leaves its pool with no worker and
        none coming, the pool's queued tasks end now and new ones are refused with the reason.
        """
        reason = self.supervisor.start_failed(pool, worker_id, error)
        if reason and not self.core.pool_down_reason(pool):
            log.error("pool %s cannot serve: %s", pool, reason)
            self.notes.append(f"pool {pool} cannot serve: {reason}")
            self.end(self.core.pool_down(pool, reason, self.clock()))

    def add_worker(self, info: WorkerInfo) -> None:
        """A worker of one of the pools has registered: the core may place work on it from now.

        Its engine's prior is the core's first estimate of its service times. An LLM worker can
        stop a sequence part-way, so the core may preempt its running work; a CPU worker cannot.
        """
        pool = self.pools[info.pool]
        self.worker_info[info.worker_id] = info
        self.supervisor.registered(pool.name, info.worker_id)
        if pool.kind == "cpu":
            # Its prefetch follows its measured round trip, unless the config fixed the slots.
            self._depth[info.worker_id] = PrefetchDepth(pool.worker_slots,
                                                        adapt=pool.slots is None)
        self.core.add_worker(WorkerSpec(worker_id=info.worker_id, pool=pool.name,
                                        slots=pool.worker_slots, concurrency=pool.concurrency,
                                        prior=info.prior,
                                        max_context_tokens=info.max_context_tokens,
                                        node_id=info.node_id, preemptible=pool.kind == "llm"),
                             self.clock())

    def pool_of(self, worker_id: str) -> PoolConfig | None:
        """The pool of a registered worker (None once it is lost)."""
        info = self.worker_info.get(worker_id)
        return self.pools[info.pool] if info is not None else None

    def assign(self) -> Dispatch:
        """One dispatch pass: end what expired, take back work if urgent work needs the room,
        and bind queued tasks to free worker slots.

        Each new work item carries its payload and its binding, which the worker echoes, so a
        report from a binding the core took back is told apart from the current one.
        """
        now = self.clock()
        if self._awaiting:
            self._end_unsent(now)
        decisions = self.core.assign(now)
        self.end(decisions.ended)
        take_back: dict[str, list[str]] = defaultdict(list)
        for p in decisions.preempted:
            take_back[p.worker_id].append(p.task_id)
        items: dict[str, list[WorkItem]] = defaultdict(list)
        expected_s: dict[str, float] = defaultdict(float)
        if self.task_log is not None and decisions.assignments:
            self.task_log.started([a.task.task_id for a in decisions.assignments])
        depth = self._depth
        for a in decisions.assignments:
            payload = self._pending[a.task.task_id].task.payload
            # The worker checks the latest start before it starts the task; a task started at
            # the core's latest start ends at its deadline at the worker, and its report is
            # late by its way back. So the worker's latest start is earlier by a measured
            # round trip (the way back, and its jitter).
            d = depth.get(a.worker_id)
            way_back_s = d.round_trip_s if d is not None and d.round_trip_s else 0.0
            latest_s = a.latest_start_s - way_back_s
            items[a.worker_id].append(WorkItem(a.task.task_id, a.task.kind, int(a.task.priority),
                                               a.task.deadline_s, payload,
                                               latest_start_s=latest_s,
                                               binding=a.binding,
                                               progress=self._progress.get(a.task.task_id),
                                               sent_s=now))
            expected_s[a.worker_id] = max(expected_s[a.worker_id], a.predicted_finish_s - now)
        workers = self.core.table.workers
        return Dispatch(dict(take_back),
                        [Batch(w, batch, expected_s[w],
                               idle=len(workers[w].in_flight) == len(batch))
                         for w, batch in items.items()],
                        [(w, workers[w].held) for w in decisions.revoke])

    def complete(self, completions: Iterable[Completion]) -> None:
        """Take workers' reports; the tasks they end get their Results."""
        now = self.clock()
        for c in completions:
            if c.ok and c.worker_id in self._depth:
                self._depth[c.worker_id].service(c.service_s)
            outcome = self.core.complete(c, now)
            if outcome is not None:
                if isinstance(c.output, ByRef):
                    self.by_reference.count("outputs", c.output.size_bytes)
                self.end([outcome])
            elif c.error == ABORTED and c.num_generated_tokens and isinstance(c.output, list):
                self._keep_progress(c)

    # -- express leases ----------------------------------------------------------------------

    def lease(self, client_id: str, pool: str, lease_id: str) -> Lease | None:
        """An express lease on an idle worker of ``pool`` for ``client_id``: the one it holds
        there (renewed, with fresh ``cases``), else a new one named ``lease_id`` when the pool
        can spare a worker (``SchedulerCore.lease``). None for an LLM pool (a batch engine
        gains nothing from it), an unknown one, or one that cannot spare a worker now.

        A new lease is the driver's once the caller has told the worker (``grant``); a caller
        that cannot ``release``s it."""
        now = self.clock()
        for held_on, (owner, held, _) in self._leases.items():
            if owner == client_id and held.pool == pool:
                held = replace(held, cases=self.core.lease_cases(pool))
                self._leases[held_on] = (owner, held, now)
                return held
        config = self.pools.get(pool)
        if config is None or config.kind != "cpu":
            return None
        worker_id = self.core.lease(pool, lease_id)
        if worker_id is None:
            return None
        lease = Lease(lease_id, worker_id, pool, self.core.lease_cases(pool))
        self._leases[worker_id] = (client_id, lease, now)
        return lease

    def release(self, worker_id: str, lease_id: str) -> None:
        """The lease ``lease_id`` on ``worker_id`` has ended at the worker: the worker is
        placement's again."""
        held = self._leases.get(worker_id)
        if held is not None and held[1].lease_id == lease_id:
            del self._leases[worker_id]
            self.core.release(worker_id)

    def lease_longest_s(self, worker_id: str) -> float:
        """The longest planned service of the kinds the lease on ``worker_id`` allows (0 for
        none): what its hang timeout scales."""
        held = self._leases.get(worker_id)
        return max((planned for _, planned in held[1].cases.values()), default=0.0) if held else 0.0

    def leases_of(self, client_id: str) -> list[tuple[str, str]]:
        """(worker_id, lease_id) of every lease ``client_id`` holds (to end when it closes)."""
        return [(w, lease.lease_id) for w, (owner, lease, _) in self._leases.items()
                if owner == client_id]

    def stale_leases(self) -> list[tuple[str, str]]:
        """(worker_id, lease_id) of the leases not asked for in ``LEASE_TTL_S``."""
        now = self.clock()
        return [(w, lease.lease_id) for w, (_, lease, asked_s) in self._leases.items()
                if now - asked_s > LEASE_TTL_S]

    def express_done(self, reports: Iterable[tuple[Any, ...]]) -> None:
        """Tasks a driver ran under its express leases have ended; each report is
        ``(TaskRecord.to_wire, Completion.to_wire, status, submit_s, end_s)``, the record's
        ``deadline_s`` absolute. They count and teach the core as any task (its metrics, its
        learned models); their Results went to their driver straight from the worker, and the
        driver held each task while it ran, so none is owed or in the task log."""
        for task, completion, status, submit_s, end_s in reports:
            record = TaskRecord.from_wire(task)
            self._record(self.core.express_done(record.to_core(submit_s), Completion(*completion),
                                                Status(status), submit_s, end_s))

    def _keep_progress(self, c: Completion) -> None:
        """A task taken back after its attempt generated ``c.num_generated_tokens`` tokens
        (``c.output``: the ids of every token so far, earlier attempts' included) goes on from
        there when it runs again, if it is still queued and this is the report of the attempt
        just taken back (``SchedulerCore.resume``)."""
        if c.task_id not in self._pending or self.core.resume(
                c.task_id, c.num_generated_tokens, c.binding) is None:
            return
        _, done = self._progress.get(c.task_id, ((), 0))
        self._progress[c.task_id] = (tuple(c.output), done + c.num_generated_tokens)

    def round_trip(self, worker_id: str, round_trip_s: float) -> None:
        """A dispatch to ``worker_id`` took ``round_trip_s`` beyond the work itself (from the
        call to its first report, less that task's service). A worker that runs one task at a
        time holds enough tasks to hide it; see ``PrefetchDepth``."""
        depth = self._depth.get(worker_id)
        if depth is None:
            return
        slots = depth.round_trip(round_trip_s)
        if slots is not None:
            self.core.set_worker_slots(worker_id, slots)

    def fail(self, worker_id: str, task_ids: Iterable[str], error: str) -> None:
        """A call to ``worker_id`` failed with the worker still alive: its tasks failed there."""
        self.complete(Completion(task_id, worker_id, ok=False, service_s=0.0, error=error)
                      for task_id in task_ids)

    def worker_lost(self, worker_id: str, reason: str) -> PoolConfig | None:
        """A worker is gone: its tasks are requeued, or fail when out of attempts.

        Returns the pool it served, which is owed a replacement (None for an unknown worker).
        """
        pool = self.pool_of(worker_id)
        self.worker_info.pop(worker_id, None)
        self._depth.pop(worker_id, None)
        self._leases.pop(worker_id, None)
        if pool is not None:
            self.supervisor.lost(pool.name, worker_id)
        self.end(self.core.worker_lost(worker_id, self.clock(), reason))
        return pool

    def _end_unsent(self, now_s: float) -> None:
        """End the tasks still waiting for their payloads once their deadline has passed
        (expired) or their driver has had ``PAYLOAD_RESEND_S`` to send them (failed)."""
        for task_id, (_, task, deadline_s, since_s) in list(self._awaiting.items()):
            if now_s > deadline_s:
                status, reason = Status.EXPIRED, "its deadline passed"
            elif now_s - since_s > PAYLOAD_RESEND_S:
                status = Status.FAILED
                reason = f"its driver did not send it in {PAYLOAD_RESEND_S:.0f} s"
            else:
                continue
            self._end_awaiting(task_id, status, f"after a scheduler restart, waiting for its "
                                                f"payload ({task.payload.size_bytes} bytes by "
                                                f"reference): {reason}", now_s)

    def _end_awaiting(self, task_id: str, status: Status, reason: str, now_s: float) -> None:
        """End a task taken up from the log that still waits for its payload, like any
        accepted task (its result in the log and its driver's mailbox)."""
        client_id, task, deadline_s, since_s = self._awaiting.pop(task_id)
        self._pending[task_id] = _Pending(task, client_id)
        self.end([Outcome(task_id, status, reason, submit_s=since_s, end_s=now_s,
                          deadline_s=deadline_s, priority=Priority(task.priority),
                          pool=task.pool)])

    def sleep_s(self, at_most_s: float) -> float:
        """How long the dispatch loop may sleep with nothing new to do: until the earliest
        queued task's latest start passes (it must then be expired), and at most ``at_most_s``."""
        next_expiry_s = self.core.next_expiry_s()
        if next_expiry_s is None:
            return at_most_s
        return min(at_most_s, max(0.0, next_expiry_s - self.clock()))

    # -- results -----------------------------------------------------------------------------

    def end(self, outcomes: Iterable[Outcome]) -> None:
        """Turn the core's outcomes of accepted tasks into Results in their drivers' mailboxes.

        Outcomes of tasks not pending here (already ended) are ignored, so a task ends once.
        """
        for outcome in outcomes:
            pending = self._pending.pop(outcome.task_id, None)
            if pending is None:
                continue
            self._progress.pop(outcome.task_id, None)
            self._record(outcome)
            result = self._result(outcome, pending.task.kind)
            self._unacked[outcome.task_id] = (pending.client_id, result)
            if isinstance(result.output, ByRef):
                # Its output lives in this process only: should it restart before the driver
                # has it, the task runs again, so its record stays in the log until then.
                self._rerun[outcome.task_id] = (pending.client_id, pending.task,
                                                outcome.deadline_s)
            if self.task_log is not None:
                self.task_log.ended([(pending.client_id, result)])
            self._post(pending.client_id, result)

    # -- views -------------------------------------------------------------------------------

    def pending(self) -> dict[str, tuple[str, TaskRecord]]:
        """task_id -> (client_id, task) for every accepted task not yet ended."""
        return {tid: (p.client_id, p.task) for tid, p in self._pending.items()}

    def unacked(self) -> dict[str, tuple[str, ResultRecord]]:
        """task_id -> (client_id, result) for every result not yet acknowledged."""
        return dict(self._unacked)

    def load(self) -> CoreStats:
        """The core's snapshot now: per pool queues and load, per worker load, result counts."""
        return self.core.stats(self.clock())

    def stats(self) -> dict[str, Any]:
        """``load()`` as a plain dict, plus what an operator reads: notes, uptime, queued and
        running counts, each worker's engine and node, the pools' configs and the learned
        models. JSON-friendly."""
        now = self.clock()
        stats = asdict(self.core.stats(now))
        stats["notes"] = list(self.notes)
        stats["uptime_s"] = now - self.started_s
        stats["queued"] = self.core.queued()
        stats["running"] = self.core.running()
        stats["owed"] = len(self._unacked)  # results not yet acknowledged by their drivers
        for worker_id, w in stats["workers"].items():
            info = self.worker_info.get(worker_id)
            if info is not None:
                w.update(engine=info.engine, simulated=info.simulated, node_id=info.node_id)
        stats["pool_config"] = {name: p.model_dump() for name, p in self.pools.items()}
        stats["supervision"] = {name: asdict(self.supervisor.health(name))
                                for name in self.supervisor.pools}
        stats["learned"] = self.core.placement.learned()
        stats["by_reference"] = dict(self.by_reference.counts)
        stats["express_leases"] = {w: lease.pool for w, (_, lease, _) in self._leases.items()}
        return stats

    # -- internals ---------------------------------------------------------------------------

    def _post(self, client_id: str, result: ResultRecord) -> None:
        receive = self._claims.pop(result.task_id, None)
        if receive is not None:
            receive(result)
        else:
            self.post(client_id, result)

    def _record(self, outcome: Outcome) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def _refusal(self, task: TaskRecord, reason: str, now_s: float) -> ResultRecord:
        """The ``rejected`` Result of ``task``, refused here before the core saw it, counted
        and recorded as the core's own refusals are."""
        outcome = self.core.refuse(task.to_core(now_s), now_s, reason)
        self._record(outcome)
        return self._result(outcome, task.kind)

    @staticmethod
    def _result(o: Outcome, kind: str) -> ResultRecord:
        started = o.start_s if o.start_s is not None else o.end_s
        return ResultRecord(task_id=o.task_id, status=o.status, output=o.output,
                            reason=o.reason, worker_id=o.worker_id, kind=kind,
                            priority=int(o.priority), pool=o.pool, queue_s=started - o.submit_s,
                            service_s=o.end_s - started, total_s=o.end_s - o.submit_s,
                            deadline_met=o.deadline_met, attempts=o.attempts)
