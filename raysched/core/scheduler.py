"""The scheduler core: a synchronous state machine driven from outside.

``submit``, ``cancel``, ``assign``, ``complete`` and ``worker_lost`` take the time as an argument
and return what happened; nothing here reads a clock, sleeps or does I/O. The Ray actor, the
simulator and the tests drive the same object.

A task is in exactly one place at a time: queued (in its pool's ``DeadlineQueue``), running (in
the ``LoadTable`` on one worker) or finished (an ``Outcome`` was returned, exactly once).
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field, replace

from raysched.core.load import LoadTable, WorkerLoad
from raysched.core.placement import (
    LeastCompletionTime,
    Placement,
    PriorEstimator,
    context_need,
    fits_context,
    min_over_eligible,
)
from raysched.core.protocol import Completion
from raysched.core.queue import DeadlineQueue
from raysched.core.types import (
    Assignment,
    CoreStats,
    CoreTask,
    Outcome,
    PoolStats,
    Preemption,
    Priority,
    Status,
    TaskState,
    WorkerSpec,
    WorkerStats,
)

QUEUED, RUNNING, CANCELLING = TaskState.QUEUED, TaskState.RUNNING, TaskState.CANCELLING
_INF = float("inf")
# Preempt when waiting for the first slot to free would leave the first queued task less than
# this many best-case services before its latest start. Taking work back costs its batch-mates
# a prefill; measured on the financial mix (Poisson and bursty), 0 (preempt only a task that
# would otherwise expire) keeps HIGH p99 at or under EDF's, 1 raised it by 6%.
PREEMPT_MARGIN = 0.0
# A task is taken back only if, after it, it still has this many best-case services of slack:
# enough to run again from the start and meet its deadline under load.
VICTIM_SLACK_FACTOR = 2.0
# How deep a worker's own queue may grow under early binding: deep enough never to push back.
EARLY_BINDING_SLOTS = 1024
# A task that may run on several pools goes to the first, in its driver's order (the cheaper
# first), predicted to finish with this share of its slack to spare: the prediction is rough (a
# queue's work ahead is counted at this task's own best case), so a pool that would only just
# make it is passed over for the next.
ROUTE_RESERVE = 0.25
# The engine priors alone: what ``SchedulerCore._probe`` checks a learned refusal against.
_PRIORS = PriorEstimator()


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Knobs of the core.

    ``aging_s``: starvation control (see ``DeadlineQueue``); None turns aging off.
    ``max_attempts``: runs of one task before a lost worker makes it ``failed``. Only runs that
    may have started count: a task bound to a lost worker behind ``concurrency`` others (a
    prefetch slot) never ran there and is requeued without charge.
    ``quarantine_after``: a task whose worker was lost (died or hung) while it may have been
    running this many times is quarantined: it next runs alone on an idle worker, and ends
    ``failed`` if that worker is lost too, so a poison task cannot take its neighbours down.
    ``max_queued_per_class``: admission bound per pool and class; a task arriving at a full class
    is rejected at once rather than left to time out.
    ``max_queued_per_pool``: bound on a pool's whole queue. When it is full, an arrival sheds the
    newest queued task of the lowest class below its own (rejected, with the reason); with
    nothing lower to shed, the arrival itself is rejected. Lower classes go first.
    ``max_queued_per_tenant``: queued tasks one tenant may have per pool, so one tenant cannot
    fill the queue and starve the rest.
    ``max_skips``: tasks a pass may set aside because no free worker suits them (context length)
    before it gives up on the pool for this pass; bounds the cost of one pass.
    ``ordering``: the deadline queue's order (see ``DeadlineQueue``).
    ``admission``: reject infeasible deadlines at submit and expire tasks that can no longer meet
    theirs. Off for the baselines that know nothing of deadlines. Refusals that rest on what was
    learned alone are probed: see ``SchedulerCore.submit``.
    ``preemption``: when a pool is full and its first queued task would, by waiting for a
    slot, pass its latest start (see ``PREEMPT_MARGIN``), take back a task of a strictly lower
    class that can still meet its own deadline when run again: a running one on a worker that
    can stop part-way (an LLM engine aborts the sequence, as vLLM's priority policy does), else
    one still waiting in a prefetch slot. The lowest class goes first, then the latest started
    (least work lost); a task is taken back at most ``max_preemptions`` times, and its attempt
    is not charged. Only for a first task predicted to meet its deadline if started now in the
    victim's place (on the financial mix at inter-arrival CV 4, over 9 seeds of ``raysched
    bench``, that cut HIGH tasks completed late from 241 to 178 and HIGH p99 from 1,922 to
    1,863 ms, for 0.3 points of HIGH deadlines met).
    ``early_binding``: bind each task to a worker at once and let it queue there (round robin,
    least-loaded balancers); workers then take up to ``EARLY_BINDING_SLOTS`` times their
    concurrency.
    """

    aging_s: float | None = 30.0
    max_attempts: int = 3
    quarantine_after: int = 2
    max_queued_per_class: int = 250_000
    max_queued_per_pool: int = 500_000
    max_queued_per_tenant: int = 100_000
    max_skips: int = 32
    ordering: str = "class_deadline"
    admission: bool = True
    preemption: bool = False
    max_preemptions: int = 2
    early_binding: bool = False


@dataclass(slots=True)
class _Record:
    task: CoreTask
    submit_s: float
    seq: int
    latest_start_s: float
    state: TaskState = QUEUED
    attempts: int = 0
    worker_id: str = ""
    start_s: float | None = None
    # Times a worker was lost while this task may have been running on it.
    kills: int = 0
    # The last loss of a run of it (``worker_lost``, ``ran_before``): a task then too late to
    # run again expires saying so.
    lost: str = ""
    bindings: int = 0
    preemptions: int = 0
    # What its latest start was figured with: its pool's changes of workers
    # (``SchedulerCore._workers_seen``) and the placement's ``figures_version``, summed (both
    # only grow).
    figures: int = 0


@dataclass(slots=True)
class Decisions:
    """What one ``assign`` pass decided: tasks to start, and tasks it ended without running
    (expired, or rejected because no worker that joined since can hold them)."""

    assignments: list[Assignment] = field(default_factory=list)
    ended: list[Outcome] = field(default_factory=list)
    # Tasks taken back from their workers to make room for urgent work: abort these first.
    preempted: list[Preemption] = field(default_factory=list)
    # Workers held by express leases whose pool now has work waiting and no free slot: the
    # driver ends those leases at the worker, then gives the workers back (``release``).
    revoke: list[str] = field(default_factory=list)


class SchedulerCore:
    """Deadline queues per pool, load tables, admission, placement, retries."""

    def __init__(self, config: CoreConfig | None = None, placement: Placement | None = None):
        self.config = config or CoreConfig()
        self.placement: Placement = placement or LeastCompletionTime()
        self.table = LoadTable()
        self._queues: dict[str, DeadlineQueue] = {}
        self._records: dict[str, _Record] = {}
        self._expiry: list[tuple[float, int, str]] = []  # (latest_start_s, seq, task_id)
        # Per pool: how many times a worker joined or left it. A latest start figured with
        # other workers is figured again before its task starts.
        self._workers_seen: Counter[str] = Counter()
        self._seq = 0
        self.counts: dict[Status, int] = {s: 0 for s in Status}
        # Per pool: tasks taken back from its workers, and tokens the resumed ones kept.
        self._preempted: Counter[str] = Counter()
        self._tokens_kept: Counter[str] = Counter()
        # Pools that cannot serve (no worker and none coming), with the reason: their tasks
        # are refused at once instead of waiting for a worker that will not come.
        self._down: dict[str, str] = {}
        # Task ids never refused for their deadline, though planned as usual: the benchmark's
        # counterfactual replay of the tasks a run refused (would they have met their deadline
        # had they been run?).
        self.spared: frozenset[str] = frozenset()
        # Per pool, the workers express leases hold (``lease``), and those being given back.
        self._held: dict[str, set[str]] = {}
        self._revoking: set[str] = set()
        # Per pool, the kinds of task submitted to it: what an express lease says it may run.
        self._kinds: dict[str, set[str]] = {}
        # Per (pool, kind), the last task admitted as a probe (``submit``); another may be once
        # it has ended (its record is gone).
        self._probes: dict[tuple[str, str], str] = {}

    # -- pools and workers -------------------------------------------------------------------

    def add_pool(self, pool: str) -> None:
        if pool not in self._queues:
            self._queues[pool] = DeadlineQueue(self.config.aging_s, self.config.ordering)

    @property
    def pools(self) -> list[str]:
        return list(self._queues)

    def add_worker(self, spec: WorkerSpec, now_s: float) -> None:
        self.add_pool(spec.pool)
        self._down.pop(spec.pool, None)
        self._kinds.setdefault(spec.pool, set())
        if self.config.early_binding:
            spec = replace(spec, slots=max(spec.slots, spec.concurrency * EARLY_BINDING_SLOTS))
        self.table.add(spec, now_s)
        self._workers_seen[spec.pool] += 1

    def set_worker_slots(self, worker_id: str, slots: int) -> None:
        """How many tasks ``worker_id`` may hold from now on: its concurrency plus the prefetch
        that hides its dispatch round trip (the driver measures it). Ignored under early
        binding, where workers hold their own queues, and for an unknown worker."""
        if not self.config.early_binding and worker_id in self.table.workers:
            self.table.set_slots(worker_id, slots)

    def worker_lost(self, worker_id: str, now_s: float,
                    reason: str = "worker lost") -> list[Outcome]:
        """Remove a worker at once; requeue its tasks or fail those out of attempts.

        A worker runs its tasks in the order they were bound, ``concurrency`` at a time: the
        first ``concurrency`` of those still in flight are charged the attempt (retries are
        at-least-once: the worker may or may not have run them); the rest go back to the queue
        as if never bound. Every one of them counts the loss towards quarantine, though: a
        worker reports a batch's tasks together (a short batch in one answer, a longer one in
        groups), so the task that killed it may be any of them, behind others that ran and
        whose reports died with it. So a loss ends a task for its attempts only when it was
        the task's own (nothing else was in flight but what was running): charging a shared
        one would fail the task in front of the one that killed the worker. After
        ``quarantine_after`` losses, shared or not, a task runs alone, where a loss is its own
        and one more ends it; so every task runs at most ``quarantine_after + max_attempts``
        times, and only one that kills its worker alone fails.
        """
        w = self.table.workers.get(worker_id)
        if w is None:
            return []
        concurrency = w.spec.concurrency
        outcomes: list[Outcome] = []
        self._held.get(w.spec.pool, set()).discard(worker_id)
        self._revoking.discard(worker_id)
        lost = self.table.remove(worker_id, now_s)
        self._workers_seen[w.spec.pool] += 1
        own = len(lost) <= concurrency  # every task in flight was running: the loss is theirs
        for i, task_id in enumerate(lost):
            rec = self._records[task_id]
            if rec.state == CANCELLING:
                del self._records[task_id]
                continue
            rec.kills += 1
            if i >= concurrency:  # (a quarantined task runs alone: it is never one of these)
                rec.attempts -= 1  # it waited in a prefetch slot: not an attempt of its own
                self._requeue(rec)
                continue
            if rec.kills > self.config.quarantine_after:
                outcomes.append(self._finish(
                    rec, Status.FAILED, now_s,
                    f"{reason} (worker {worker_id}) while running alone in quarantine; a "
                    f"worker was lost {rec.kills} times while it held it (running it, or "
                    f"bound to run it next)"))
            elif own and rec.attempts >= self.config.max_attempts:
                outcomes.append(self._finish(rec, Status.FAILED, now_s,
                                             f"{reason} (worker {worker_id}); "
                                             f"gave up after {rec.attempts} attempts"))
            else:
                rec.lost = f"{reason} (worker {worker_id}) while it ran"
                self._requeue(rec)
        return outcomes

    def pool_down(self, pool: str, reason: str, now_s: float) -> list[Outcome]:
        """Mark ``pool`` unable to serve (no worker and none coming); its queued tasks end now.

        Until a worker joins the pool again, submits to it are refused at once with ``reason``.
        Tasks that had run before end ``failed``, the rest ``rejected``.
        """
        self.add_pool(pool)
        self._down[pool] = reason
        queue = self._queues[pool]
        ended = []
        for task in list(queue.tasks()):
            queue.remove(task.task_id, task.priority)
            rec = self._records[task.task_id]
            ended.append(self._finish(rec, Status.FAILED if rec.attempts else Status.REJECTED,
                                      now_s, f"pool {pool} cannot serve: {reason}"))
        return ended

    def pool_down_reason(self, pool: str) -> str:
        """Why ``pool`` cannot serve now; empty while it can (or may soon)."""
        return self._down.get(pool, "")

    # -- tasks -------------------------------------------------------------------------------

    def submit(self, task: CoreTask, now_s: float) -> list[Outcome]:
        """Admit ``task``; returns every Outcome the call caused, at once.

        The list holds the task's own ``rejected`` Outcome when it cannot be admitted, and the
        queued tasks it shed when its pool's queue was full; it is empty when the task was
        admitted and shed nothing. The task was admitted iff no Outcome carries its id.

        Admission: the pool exists and can serve, some worker can hold the task, the class queue
        has room, and the deadline can be met on an idle eligible worker (unless best-effort).

        A refusal can rest on what was learned alone, from few completions: the learned figures
        say no while the engine priors say an idle worker makes it, and some eligible worker's
        figure is thinly learned. Refusing then would starve the figures of the completions
        that could correct them (one 10 s call of a kind whose calls take 0.1 ms, a new worker
        figured from it), and every later task of the kind would be refused as well. So one
        such task per (pool, kind) at a time is admitted as a probe: queued in its class as any
        task, never refused or expired for its deadline, its completion learned from. A figure
        that is right costs one late task at a time while it is thin; a wrong one is corrected.
        """
        if task.task_id in self._records:
            raise ValueError(f"task id {task.task_id!r} is already in the scheduler")
        if task.alternatives:
            task, cases = self._route(task, now_s)
        else:
            cases = None
        queue = self._queues.get(task.pool)
        self._seq += 1
        rec = _Record(task, now_s, self._seq, _INF)
        if queue is None:
            return [self._reject(rec, now_s, f"unknown pool {task.pool!r}; pools: {self.pools}")]
        if task.pool in self._down:
            return [self._reject(rec, now_s, f"pool {task.pool} cannot serve: "
                                             f"{self._down[task.pool]}")]
        config = self.config
        if queue.depth(task.priority) >= config.max_queued_per_class:
            return [self._reject(rec, now_s, f"queue full: {config.max_queued_per_class} "
                                             f"{task.priority.name} tasks already wait for "
                                             f"{task.pool}")]
        if queue.tenant_depth(task.tenant) >= config.max_queued_per_tenant:
            return [self._reject(rec, now_s, f"tenant {task.tenant!r} already has "
                                             f"{config.max_queued_per_tenant} tasks queued "
                                             f"for {task.pool}")]
        kinds = self._kinds.get(task.pool)
        if kinds is not None and task.kind not in kinds:
            kinds.add(task.kind)
        if cases is None:
            cases = self.placement.cases_s(task, self.table)
        if cases is None:
            if not any(True for _ in self.table.groups(task.pool)):
                # The pool is empty for now but a worker is coming (one is being started or
                # replaced; the driver calls ``pool_down`` when none is): wait for it.
                cases = (0.0, 0.0)
            else:
                return [self._reject(rec, now_s, self._context_refusal(task))]
        best_case_s, planned_s = cases
        slack_s = task.deadline_s - now_s
        if (config.admission and not task.best_effort
                and not (max(cases) > slack_s and self._probe(task, slack_s))):
            if best_case_s > slack_s and task.task_id not in self.spared:
                return [self._reject(rec, now_s, f"infeasible deadline: needs at least "
                                                 f"{best_case_s * 1e3:.1f} ms on an idle "
                                                 f"{task.pool} worker, has "
                                                 f"{slack_s * 1e3:.1f} ms")]
            # Admission refuses on the best case; expiry plans with what the task will take at
            # least (never less than the best case), so it is not started too late to finish.
            rec.latest_start_s = latest_start_s(task.deadline_s, cases)
            rec.figures = self._figures(task)
        shed: list[Outcome] = []
        if len(queue) >= config.max_queued_per_pool:
            victim = next((v for c in reversed(Priority) if c > task.priority
                           and (v := queue.newest(c)) is not None), None)
            if victim is None:
                return [self._reject(rec, now_s, f"overloaded: {len(queue)} tasks queued for "
                                                 f"{task.pool} and none of a lower class to "
                                                 f"shed")]
            queue.remove(victim.task_id, victim.priority)
            shed.append(self._finish(
                self._records[victim.task_id], Status.REJECTED, now_s,
                f"shed under overload: {task.pool}'s queue is full and a "
                f"{task.priority.name} task arrived"))
        self._records[task.task_id] = rec
        self._push(rec)
        return shed

    def refuse(self, task: CoreTask, now_s: float, reason: str) -> Outcome:
        """End ``task`` ``rejected`` for ``reason``, found by its driver before it could be
        submitted (a requirement no worker meets, an id already in use): counted with the
        core's own refusals, so the result counts add up to what was handed in."""
        self._seq += 1
        return self._reject(_Record(task, now_s, self._seq, _INF), now_s, reason)

    def _probe(self, task: CoreTask, slack_s: float) -> bool:
        """Whether ``task``, which the learned figures refuse or expire at once, is admitted as
        its (pool, kind)'s probe (see ``submit``): none is in the scheduler, the figures rest
        on few completions on some eligible worker (``Placement.thinly_learned``), and on the
        engine priors an idle eligible worker meets its deadline with the whole
        ``max_new_tokens``."""
        key = (task.pool, task.kind)
        if (self._probes.get(key) in self._records or task.task_id in self.spared
                or not self.placement.thinly_learned(task, self.table)):
            return False
        prior_s = min_over_eligible(task, self.table, _PRIORS.idle_service_s)
        if prior_s is None or prior_s > slack_s:
            return False
        self._probes[key] = task.task_id
        return True

    def _route(self, task: CoreTask, now_s: float
               ) -> tuple[CoreTask, tuple[float, float] | None]:
        """``task`` bound to one of its pools (``pool``, then ``alternatives``): the first
        predicted to finish with ``ROUTE_RESERVE`` of its slack to spare, else the one predicted
        to finish first; its first pool when none can serve (admission then says why). With it,
        the pool's ``cases_s``, which admission reads (None when no pool could serve)."""
        # Without a deadline any pool that can serve will do: the cheapest, the first.
        margin_s = (ROUTE_RESERVE * (task.deadline_s - now_s) if task.deadline_s != float("inf")
                    else 0.0)
        best: tuple[float, CoreTask, tuple[float, float]] | None = None
        for pool in (task.pool, *task.alternatives):
            if pool not in self._queues or pool in self._down:
                continue
            candidate = replace(task, pool=pool, alternatives=())
            cases = self.placement.cases_s(candidate, self.table)
            if cases is None:
                continue
            service_s = max(cases)
            finish_s = now_s + self._predicted_wait_s(candidate, service_s) + service_s
            if finish_s <= task.deadline_s - margin_s:
                return candidate, cases
            if best is None or finish_s < best[0]:
                best = (finish_s, candidate, cases)
        if best is None:
            return replace(task, alternatives=()), None
        return best[1], best[2]

    def _predicted_wait_s(self, task: CoreTask, service_s: float) -> float:
        """A rough wait before ``task`` would start in its pool: nothing when a worker has room
        to run it and no task of its class or higher waits; else the work in flight plus the
        queued work of its class and higher (each counted at ``service_s``), over the tasks the
        pool's workers run at once. O(workers): for routing only."""
        workers = list(self.table.pool_workers(task.pool))
        capacity = sum(w.spec.concurrency for w in workers)
        if not capacity:
            return float("inf")
        queue = self._queues[task.pool]
        ahead = sum(queue.depth(c) for c in Priority if c <= task.priority)
        if not ahead and any(len(w.in_flight) < w.spec.concurrency for w in workers):
            return 0.0
        return (sum(w.backlog_s for w in workers) + ahead * service_s) / capacity

    def cancel(self, task_id: str, now_s: float,
               reason: str = "cancelled by the caller") -> Outcome | None:
        """Cancel a queued or running task; None when it has already finished or is unknown.

        A running task's slot stays taken until its worker reports; the report is then dropped.
        """
        rec = self._records.get(task_id)
        if rec is None or rec.state == CANCELLING:
            return None
        if rec.state == QUEUED:
            self._queues[rec.task.pool].remove(task_id, rec.task.priority)
            return self._finish(rec, Status.CANCELLED, now_s, reason)
        rec.state = CANCELLING
        self.counts[Status.CANCELLED] += 1
        return self._outcome(rec, Status.CANCELLED, now_s, reason)

    def assign(self, now_s: float) -> Decisions:
        """One dispatch pass at ``now_s``.

        First expire queued tasks whose latest feasible start has passed (by the figures of the
        moment: ``_past_latest_start``). Then, per pool, while a worker has a free slot: pop the
        first task by (effective class, deadline, seq), expire it if its latest start has
        passed by those figures, else place it; a task no free worker can take is set aside and
        put back afterwards, so it keeps its place and does not block work that can run
        elsewhere. A task the placement calls likely late (``Choice.late``) is set aside too,
        and placed after the rest of the queue has had the free slots: on a slot still free
        then, or put back.
        """
        expiry = self._expiry
        decisions = Decisions([], self._expire(now_s) if expiry and expiry[0][0] < now_s else [],
                              [])
        # Locals for what the loop reads on every task.
        table, place, records = self.table, self.placement.place, self._records
        max_skips, quarantine_after = self.config.max_skips, self.config.quarantine_after
        for pool, queue in self._queues.items():
            skipped: list[CoreTask] = []
            # Tasks the placement called likely late, placed again once the queue has had the
            # free slots (from ``late[retried]`` on); a second call is final.
            late: list[CoreTask] = []
            retried = 0
            held = self._held.get(pool)
            while table.free_slots(pool) > 0:
                if queue and len(skipped) + len(late) < max_skips:
                    task = queue.pop(now_s)
                    assert task is not None
                    deferrable = True
                elif retried < len(late):
                    task, deferrable = late[retried], False
                    retried += 1
                else:
                    break
                rec = records[task.task_id]
                # Figured again where a change can matter: figures that moved since (other
                # workers, or what is learned), or within one planned service of its latest
                # start, where the small moves of each completion count. Figuring every task
                # on every pass would double the cost of a pass.
                if ((rec.latest_start_s - now_s < task.deadline_s - rec.latest_start_s
                     or rec.figures != self._figures(task))
                        and self._refusable(rec) and self._past_latest_start(rec, now_s)):
                    decisions.ended.append(self._finish_late(
                        rec, now_s, f"deadline can no longer be met: it needs "
                                    f"{(rec.task.deadline_s - rec.latest_start_s) * 1e3:.1f} ms "
                                    f"as planned, {(rec.task.deadline_s - now_s) * 1e3:.1f} "
                                    f"ms remain"))
                    continue
                if rec.kills >= quarantine_after:
                    if not self._start_alone(rec, decisions, now_s):
                        skipped.append(task)
                    continue
                choice = place(task, table, now_s)
                if choice is None:
                    if self.placement.best_case_s(task, self.table) is None:
                        # It arrived while the pool was empty, or the workers that could hold it
                        # are gone: end it now rather than let it wait forever at the head.
                        rec = self._records[task.task_id]
                        status = Status.FAILED if rec.attempts else Status.REJECTED
                        decisions.ended.append(self._finish(
                            rec, status, now_s, self._context_refusal(task)))
                        continue
                    skipped.append(task)
                    continue
                if held and len(choice.worker.in_flight) >= choice.worker.spec.concurrency:
                    # It would wait behind the work running there while an express lease
                    # holds a worker idle: it waits in the queue instead, the lease is asked
                    # back below, and the worker it frees takes it.
                    skipped.append(task)
                    break
                if (choice.misses or choice.waits) and self._refusable(rec):
                    if choice.misses:
                        decisions.ended.append(self._finish_missed(rec, now_s))
                    else:
                        skipped.append(task)  # its latest start ends the wait
                    continue
                if choice.late and deferrable and self._refusable(rec):
                    late.append(task)
                    continue
                self._bind(rec, choice.worker.worker_id, choice.service_s, choice.finish_s,
                           decisions, now_s)
            skipped += late[retried:]
            for task in skipped:
                rec = self._records[task.task_id]
                queue.push(task, rec.seq, rec.submit_s, rec.latest_start_s)
            if held and self._waits(pool):
                self._revoke(pool, decisions)
            if self.config.preemption and queue and not table.free_slots(pool):
                self._preempt_for_head(pool, queue, decisions, now_s)
        return decisions

    # -- express leases ----------------------------------------------------------------------

    def lease(self, pool: str, lease_id: str) -> str | None:
        """Hold an idle worker of ``pool`` for the express lease ``lease_id`` and return its id;
        None when the pool cannot spare one.

        A held worker takes nothing from the queue: its driver sends it tasks directly, and
        the core learns of them when they end (``express_done``). A pool spares a worker only
        while no work waits for it (``_waits``), and never its last one free for placement; as
        soon as work waits, the next ``assign`` asks for its held workers back
        (``Decisions.revoke``).
        """
        if pool not in self._queues or pool in self._down or self._waits(pool):
            return None
        free = [w for w in self.table.ordered(pool) if not w.held]
        idle = [w for w in free if not w.in_flight and not w.alone_task]
        if len(free) < 2 or not idle:
            return None
        worker = idle[-1]  # placement takes the first idle one it finds: keep that one
        self.table.hold(worker.worker_id, lease_id)
        self._held.setdefault(pool, set()).add(worker.worker_id)
        return worker.worker_id

    def release(self, worker_id: str) -> str:
        """Give a worker an express lease held back to placement (its lease is over at the
        worker); returns the lease ("" when it held none)."""
        lease_id = self.table.release(worker_id)
        self._revoking.discard(worker_id)
        w = self.table.workers.get(worker_id)
        if w is not None:
            self._held.get(w.spec.pool, set()).discard(worker_id)
        return lease_id

    def lease_cases(self, pool: str) -> dict[str, tuple[float, float]]:
        """Per kind submitted to ``pool``: ``(best_case_s, planned_case_s)`` as admission and
        expiry use them, for an express lease to decide as the queue would (a task with less
        slack than its best case is refused; past ``deadline - planned`` it is not started)."""
        out: dict[str, tuple[float, float]] = {}
        for kind in self._kinds.get(pool, ()):
            cases = self.placement.cases_s(CoreTask("", kind, Priority.CRITICAL, _INF, pool),
                                           self.table)
            if cases is not None:
                out[kind] = cases
        return out

    def express_done(self, task: CoreTask, completion: Completion, status: Status,
                     submit_s: float, end_s: float) -> Outcome:
        """A task an express lease ran outside the queue ended with ``status`` (its driver's
        verdict: it may have been cancelled) after its worker's report ``completion``: learn
        from it as from any completion, count it, and return its Outcome."""
        worker = self.table.workers.get(completion.worker_id)
        if worker is not None:
            # Asked first as placement would be: a learning placement learns a worker's times
            # against its prior, which it takes up when it first predicts for that worker (a
            # held worker's may not have been yet).
            self.placement.service_s(task, worker)
            self.placement.observe(task, completion, end_s)
        self.counts[status] += 1
        return Outcome(task.task_id, status, completion.error, completion.worker_id, submit_s,
                       end_s - completion.service_s, end_s, task.deadline_s, 1, None,
                       task.priority, task.pool)

    def _waits(self, pool: str) -> bool:
        """Whether work waits for ``pool``: queued, or bound to a worker behind the work it
        runs (in a prefetch slot), where a held worker could have run it at once."""
        return bool(len(self._queues[pool])) or self.table.waiting(pool) > 0

    def _revoke(self, pool: str, decisions: Decisions) -> None:
        for worker_id in self._held[pool] - self._revoking:
            self._revoking.add(worker_id)
            decisions.revoke.append(worker_id)

    def _preempt_for_head(self, pool: str, queue: DeadlineQueue, decisions: Decisions,
                          now_s: float) -> None:
        """Make room for the queue's first task when waiting would make it miss (see
        ``CoreConfig.preemption``); at most one task per pass, so a pass stays cheap."""
        top = queue.peek(now_s)
        assert top is not None
        task = top[1]
        rec = self._records[task.task_id]
        best_case_s = task.deadline_s - rec.latest_start_s
        # Past its latest start (only a task spared from expiry, ``spared``, is still queued
        # then): taking work back cannot make it meet its deadline.
        if (rec.latest_start_s == _INF or rec.latest_start_s < now_s
                or rec.kills >= self.config.quarantine_after):
            return
        # Waiting is fine if some eligible slot frees early enough; stop at the first one.
        victim: tuple[tuple[int, float], _Record, WorkerLoad] | None = None
        for w in self.table.pool_workers(pool):
            if not fits_context(task, w.spec.max_context_tokens):
                continue
            for i, (tid, service_s) in enumerate(w.in_flight.items()):
                v = self._records[tid]
                assert v.start_s is not None
                if v.start_s + service_s <= rec.latest_start_s - PREEMPT_MARGIN * best_case_s:
                    return
                # Not a task bound in this very pass (its worker has not even been sent it),
                # and only one that can still meet its own deadline when run again.
                if (v.task.priority > task.priority and v.state is RUNNING
                        and v.start_s < now_s and _can_wait(v, now_s)
                        and v.preemptions < self.config.max_preemptions
                        and (w.spec.preemptible or i >= w.spec.concurrency)):
                    key = (int(v.task.priority), v.start_s)
                    if victim is None or key > victim[0]:
                        victim = (key, v, w)
        if victim is None:
            return
        _, v, w = victim
        # Only for a task that, started now in the victim's place, is predicted to meet its
        # deadline: taking work back for one that misses anyway costs the victim its progress
        # and saves nothing.
        if now_s + self.placement.service_s(task, w, instead_of=v.task.task_id) > task.deadline_s:
            return
        self.table.finish(v.task.task_id, now_s, completed=False)
        v.attempts -= 1
        v.preemptions += 1
        self._preempted[pool] += 1
        decisions.preempted.append(Preemption(v.task.task_id, w.worker_id, task.task_id,
                                              v.bindings))
        # The head peeked above, taken by pop (the queue is unchanged since), which notes an
        # aged task going before tight work as the queue's bound on that counts.
        taken = queue.pop(now_s)
        assert taken is task
        self._requeue(v)
        choice = self.placement.place(task, self.table, now_s)
        if choice is None:
            queue.push(task, rec.seq, rec.submit_s, rec.latest_start_s)
            return
        if (choice.misses or choice.waits) and self._refusable(rec):
            if choice.misses:
                decisions.ended.append(self._finish_missed(rec, now_s))
            else:
                queue.push(task, rec.seq, rec.submit_s, rec.latest_start_s)
            return
        self._bind(rec, choice.worker.worker_id, choice.service_s, choice.finish_s, decisions,
                   now_s)

    def _refusable(self, rec: _Record) -> bool:
        """Whether ``rec`` may be refused for its deadline. Then a placement confident that it
        misses wherever it runs (``Choice.misses``) ends it now: running it would only delay
        the tasks that can still meet theirs, and waiting cannot help, as the work queued ahead
        of it drains no faster than time passes. One confident that it misses on every free
        worker but may not on a full one (``Choice.waits``) leaves it queued: its latest start
        ends the wait. Any other task runs where placement chose, as it would wait for ever."""
        return (self.config.admission and not rec.task.best_effort
                and rec.latest_start_s != float("inf") and rec.task.task_id not in self.spared)

    def _finish_missed(self, rec: _Record, now_s: float) -> Outcome:
        return self._finish_late(rec, now_s,
                                 f"deadline can no longer be met: the work queued ahead of it on "
                                 f"every eligible {rec.task.pool} worker is predicted to take "
                                 f"past its deadline ({(rec.task.deadline_s - now_s) * 1e3:.1f} "
                                 f"ms away)")

    def _finish_late(self, rec: _Record, now_s: float, reason: str) -> Outcome:
        """End, ``expired``, a task that can no longer meet its deadline by starting now; one
        that ran and whose run was lost (``lost``: its worker died or hung) says so first, as
        that, not the queue, is why it is late."""
        if rec.lost:
            reason = f"{rec.lost}, and running it again cannot meet its deadline ({reason})"
        return self._finish(rec, Status.EXPIRED, now_s, reason)

    def _bind(self, rec: _Record, worker_id: str, service_s: float, finish_s: float,
              decisions: Decisions, now_s: float, alone: bool = False) -> None:
        rec.state, rec.worker_id, rec.start_s = RUNNING, worker_id, now_s
        rec.attempts += 1
        rec.bindings += 1
        self.table.start(rec.task.task_id, worker_id, service_s, now_s, alone=alone)
        self.placement.bound(rec.task, self.table.workers[worker_id], now_s)
        decisions.assignments.append(Assignment(rec.task, worker_id, rec.attempts, service_s,
                                                finish_s, rec.latest_start_s, rec.bindings))

    def _start_alone(self, rec: _Record, decisions: Decisions, now_s: float) -> bool:
        """Run a quarantined task on an idle worker that takes nothing else meanwhile.

        Placement policies are bypassed: any idle worker that can hold it will do, and its
        prior gives the predicted service. False when no such worker is idle now.
        """
        task = rec.task
        w = self.table.idle_worker(
            task.pool, lambda w: w.free_slots > 0
            and fits_context(task, w.spec.max_context_tokens))
        if w is None:
            return False
        service_s = w.spec.prior.service_s(task.num_prompt_tokens, task.max_new_tokens)
        self._bind(rec, w.worker_id, service_s, now_s + service_s, decisions, now_s, alone=True)
        return True

    def complete(self, completion: Completion, now_s: float) -> Outcome | None:
        """Take a worker's report. Returns the Outcome, or None for a report that ends nothing:
        a duplicate, a report from a worker the task no longer runs on, or a cancelled task."""
        rec = self._records.get(completion.task_id)
        if (rec is None or rec.state == QUEUED or rec.worker_id != completion.worker_id
                or (completion.binding and completion.binding != rec.bindings)):
            return None
        self.table.finish(completion.task_id, now_s)
        if rec.state == CANCELLING:
            del self._records[completion.task_id]
            return None
        if completion.expired:
            return self._finish_late(rec, now_s, expired_at_worker(completion.worker_id))
        self.placement.observe(rec.task, completion, now_s)
        if completion.ok:
            return self._finish(rec, Status.COMPLETED, now_s, "", completion.output)
        if completion.retryable and rec.attempts < self.config.max_attempts:
            self._requeue(rec)
            return None
        return self._finish(rec, Status.FAILED, now_s,
                            completion.error or "worker reported failure")

    # -- views -------------------------------------------------------------------------------

    def next_expiry_s(self) -> float | None:
        """When the earliest queued task's latest start passes (a hint: entries may be stale)."""
        return self._expiry[0][0] if self._expiry else None

    def deadline_of(self, task_id: str) -> float:
        """The absolute deadline of an unfinished task (infinite for an unknown one)."""
        rec = self._records.get(task_id)
        return rec.task.deadline_s if rec is not None else float("inf")

    def state_of(self, task_id: str) -> TaskState | None:
        rec = self._records.get(task_id)
        return rec.state if rec else None

    def queued(self, pool: str | None = None) -> int:
        if pool is not None:
            return len(self._queues[pool])
        return sum(len(q) for q in self._queues.values())

    def running(self) -> int:
        return sum(len(w.in_flight) for w in self.table.workers.values())

    def unfinished(self) -> int:
        """Tasks accepted and not yet ended (queued or running, cancelling not counted)."""
        return sum(1 for r in self._records.values() if r.state != CANCELLING)

    def stats(self, now_s: float) -> CoreStats:
        """A snapshot: per pool queue depth by class and oldest wait, per worker load."""
        pools = {}
        for pool, queue in self._queues.items():
            oldest = {c.name: (now_s - a if (a := queue.oldest_arrival_s(c)) is not None else 0.0)
                      for c in Priority}
            workers = list(self.table.pool_workers(pool))
            pools[pool] = PoolStats(
                queued={c.name: n for c, n in queue.depth_by_class().items()},
                oldest_wait_s=oldest, workers=len(workers),
                in_flight=sum(len(w.in_flight) for w in workers),
                free_slots=sum(w.free_slots for w in workers),
                backlog_s=sum(w.backlog_s for w in workers),
                utilization=_mean([w.utilization(now_s) for w in workers]),
                down=self._down.get(pool, ""), preempted=self._preempted[pool],
                tokens_kept=self._tokens_kept[pool])
        worker_stats = {
            w.worker_id: WorkerStats(pool=w.spec.pool, in_flight=len(w.in_flight),
                                     free_slots=w.free_slots, backlog_s=w.backlog_s,
                                     completed=w.completed, utilization=w.utilization(now_s))
            for w in self.table.workers.values()
        }
        return CoreStats(pools=pools, workers=worker_stats,
                         results={s.value: n for s, n in self.counts.items()})

    # -- internals ---------------------------------------------------------------------------

    def _push(self, rec: _Record) -> None:
        rec.state = QUEUED
        self._queues[rec.task.pool].push(rec.task, rec.seq, rec.submit_s, rec.latest_start_s)
        if rec.latest_start_s != _INF:
            heapq.heappush(self._expiry, (rec.latest_start_s, rec.seq, rec.task.task_id))
            # Entries of tasks that have started stay until their time comes; drop them when
            # they outnumber the tasks in flight or queued four to one, so the heap tracks the
            # queue, not the history (a rebuild walks every task: at 2 to 1 it cost 1 µs a
            # task at 10^5 queued, benchmarks/overhead.py part (a)).
            if len(self._expiry) > 4 * len(self._records) + 1024:
                self._expiry = [(r.latest_start_s, r.seq, r.task.task_id)
                                for r in self._records.values()
                                if r.state == QUEUED and r.latest_start_s != float("inf")]
                heapq.heapify(self._expiry)

    def resume(self, task_id: str, generated_tokens: int, binding: int) -> CoreTask | None:
        """A task taken back from its worker (preempted) after its attempt, ``binding``,
        generated ``generated_tokens`` tokens runs again from where it stopped, as vLLM's
        recompute preemption does: its prompt becomes what it had plus what it generated, its
        budget what is left, so the next attempt prefills that prompt and decodes only the
        rest. Its latest start moves with its shorter best case.

        Returns the task as it now stands; None (nothing changes) when it is not queued any
        more (it started again, or ended), the report is of an older attempt than the one
        taken back last, or there is nothing to keep."""
        rec = self._records.get(task_id)
        if (rec is None or rec.state != QUEUED or binding != rec.bindings
                or generated_tokens <= 0):
            return None
        t = rec.task
        if generated_tokens >= t.max_new_tokens:
            return None
        self._queues[t.pool].remove(task_id, t.priority)
        self._tokens_kept[t.pool] += generated_tokens
        rec.task = replace(t, num_prompt_tokens=t.num_prompt_tokens + generated_tokens,
                           max_new_tokens=t.max_new_tokens - generated_tokens)
        if rec.latest_start_s != _INF:
            cases = self.placement.cases_s(rec.task, self.table)
            if cases is not None:
                rec.latest_start_s = max(rec.latest_start_s, rec.task.deadline_s - max(cases))
        self._push(rec)
        return rec.task

    def ran_before(self, task_id: str, runs: int, why: str) -> None:
        """A queued task that had been sent to a worker ``runs`` times before it was queued
        again from outside the core (a scheduler's restart, its task log says so): those count
        as its attempts, and ``why`` is the loss of its last run (a task then too late to run
        again expires saying so, as after a lost worker). Nothing for a task not queued."""
        rec = self._records.get(task_id)
        if rec is not None and rec.state == QUEUED:
            rec.attempts += runs
            rec.lost = why

    def _requeue(self, rec: _Record) -> None:
        rec.worker_id, rec.start_s = "", None
        self._push(rec)

    def _expire(self, now_s: float) -> list[Outcome]:
        """Queued tasks that can no longer meet their deadline end now, without running."""
        out: list[Outcome] = []
        while self._expiry and self._expiry[0][0] < now_s:
            _, _, task_id = heapq.heappop(self._expiry)
            rec = self._records.get(task_id)
            # A task's entries are hints: its latest start moves (``resume``,
            # ``_past_latest_start``), so it is figured again when one comes due.
            if rec is None or rec.state != QUEUED or task_id in self.spared:
                continue
            if not self._past_latest_start(rec, now_s):
                heapq.heappush(self._expiry, (rec.latest_start_s, rec.seq, task_id))
                continue
            self._queues[rec.task.pool].remove(task_id, rec.task.priority)
            out.append(self._finish_late(rec, now_s,
                                         f"deadline can no longer be met: the latest start was "
                                         f"{(now_s - rec.latest_start_s) * 1e3:.1f} ms ago"))
        return out

    def _past_latest_start(self, rec: _Record, now_s: float) -> bool:
        """Whether ``rec`` is past its latest start by the placement's figures now, which it
        takes as its latest start. They move as workers join and leave and as telemetry comes
        in (the answer lengths a kind plans with, a worker's learned speed), so the figure set
        at submit goes stale: on the financial mix at inter-arrival CV 8, reasoning tasks
        planned at 4.4 s when they came started with 4.4-4.6 s left while the figures had
        moved to 4.8 s, and ended late (MEDIUM met 67.14% of its deadlines, edf 67.78%; with
        the figures of the moment 67.55%, seeds 0-2)."""
        cases = self.placement.cases_s(rec.task, self.table)
        if cases is not None:
            rec.latest_start_s = latest_start_s(rec.task.deadline_s, cases)
            rec.figures = self._figures(rec.task)
        return rec.latest_start_s < now_s

    def _figures(self, task: CoreTask) -> int:
        return self._workers_seen[task.pool] + self.placement.figures_version(task)

    def _context_refusal(self, task: CoreTask) -> str:
        """Why no worker can hold ``task``: the context it asks for, and the most one holds."""
        most = max((g.max_context_tokens for g in self.table.groups(task.pool)), default=0)
        return (f"no worker in {task.pool} can hold {context_need(task)} tokens "
                f"(the most a worker there holds: {most})")

    def _reject(self, rec: _Record, now_s: float, reason: str) -> Outcome:
        self.counts[Status.REJECTED] += 1
        return self._outcome(rec, Status.REJECTED, now_s, reason)

    def _finish(self, rec: _Record, status: Status, now_s: float, reason: str,
                output: object = None) -> Outcome:
        del self._records[rec.task.task_id]
        self.counts[status] += 1
        return self._outcome(rec, status, now_s, reason, output)

    @staticmethod
    def _outcome(rec: _Record, status: Status, now_s: float, reason: str,
                 output: object = None) -> Outcome:
        task = rec.task
        # Positional, in Outcome's field order: one is built per task.
        return Outcome(task.task_id, status, reason, rec.worker_id, rec.submit_s, rec.start_s,
                       now_s, task.deadline_s, rec.attempts, output, task.priority, task.pool)


def latest_start_s(deadline_s: float, cases: tuple[float, float]) -> float:
    """The last moment a task due at ``deadline_s`` may start, by its ``(best_case_s,
    planned_case_s)``: admission refuses on the best case, expiry plans with what the task will
    take at least (never less than the best case), so it is not started too late to finish."""
    return deadline_s - max(cases)


def expired_at_worker(worker_id: str) -> str:
    """The reason of a task its worker did not start: its latest start had passed."""
    return (f"deadline could no longer be met when worker {worker_id} was about to start it; "
            "not run")


def _can_wait(rec: _Record, now_s: float) -> bool:
    """Whether ``rec`` could be run again from the start and still meet its deadline: it has
    ``VICTIM_SLACK_FACTOR`` best-case services of slack left (always, without a deadline)."""
    if rec.latest_start_s == float("inf"):
        return True
    return (rec.latest_start_s - now_s
            >= VICTIM_SLACK_FACTOR * (rec.task.deadline_s - rec.latest_start_s))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
