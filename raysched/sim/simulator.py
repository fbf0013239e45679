"""A discrete-event driver of the unchanged ``SchedulerCore`` on a virtual clock.

Events are arrivals and worker completions, kept in one heap keyed ``(time_s, seq)`` so a run is
deterministic. After every event the core gets an ``assign`` pass at that time, exactly as the
Ray actor's dispatch loop does after a submission or a completion; a wake-up is also scheduled
for the core's next expiry, so tasks expire on time when nothing else happens.

With a ``SchedulerCost`` the scheduler is charged for its own work: it is one server, an event
is handled once the scheduler is free (so it sees arrivals and completions late when busy), and
the work it binds reaches the workers when the pass's cost has been paid. ``SimRun`` reports
how busy it was.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from raysched.core.load import WorkerGroup, WorkerLoad
from raysched.core.protocol import Completion
from raysched.core.scheduler import SchedulerCore
from raysched.core.types import CoreTask, Outcome, WorkerSpec
from raysched.sim.cost import SchedulerCost
from raysched.sim.workers import SimLLMWorker, SimTask, SimWorker

_ARRIVAL, _WORKER, _WAKE, _SPEED = 0, 1, 2, 3
_TICK_S = 1e-6


@dataclass
class SimRun:
    """What a run produced: one Outcome per task, when the last one ended, the workers' busy
    time, and the seconds the scheduler spent on its own work (0 without a cost)."""

    outcomes: list[Outcome] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    end_s: float = 0.0
    busy_s: dict[str, float] = field(default_factory=dict)
    events: int = 0
    scheduler_busy_s: float = 0.0


class Simulator:
    """Runs a workload through ``core`` on ``workers``."""

    def __init__(self, core: SchedulerCore, workers: dict[str, tuple[str, SimWorker]],
                 slots: dict[str, int] | None = None, cost: SchedulerCost | None = None) -> None:
        """``workers``: worker_id -> (pool, worker). ``slots``: per worker, default concurrency.
        ``cost``: what the scheduler spends per task (None: nothing).

        Simulated workers need no prefetch (there is no dispatch round trip to hide), so by
        default a worker holds exactly as many tasks as it runs at once.
        """
        self.core = core
        self.cost = cost or SchedulerCost()
        self.workers = workers
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, int, object]] = []
        self._version: dict[str, int] = {}
        self._truth: dict[str, SimTask] = {}
        for wid, (pool, w) in workers.items():
            n = (slots or {}).get(wid, w.concurrency)
            core.add_worker(WorkerSpec(wid, pool, slots=n, concurrency=w.concurrency,
                                       prior=w.prior, max_context_tokens=w.max_context_tokens,
                                       preemptible=isinstance(w, SimLLMWorker)), 0.0)
            self._version[wid] = 0

    def run(self, tasks: Iterable[SimTask], on_progress: Callable[[int], None] | None = None,
            speed_changes: Iterable[tuple[float, str, float]] = ()) -> SimRun:
        """Feed ``tasks`` (sorted by arrival) and run until every task has ended.

        ``speed_changes``: ``(time_s, worker_id, speed)`` events, a worker slowing down (speed is
        a service-time multiplier) at a moment the scheduler is not told about.
        """
        run = SimRun()
        arrivals = iter(tasks)
        self._push_arrival(arrivals)
        for at, wid, speed in speed_changes:
            heapq.heappush(self._heap, (at, next(self._seq), _SPEED, (wid, speed)))
        wake_at = float("inf")
        core, heap, truth, cost = self.core, self._heap, self._truth, self.cost
        charged = cost.per_task_s > 0
        busy_until = 0.0
        while heap:
            at, _, kind, obj = heapq.heappop(heap)
            run.events += 1
            # The scheduler handles an event once it is free; without a cost, at once.
            now = max(at, busy_until) if charged and kind != _SPEED else at
            handled_s, spent_s = now, 0.0
            if kind == _ARRIVAL:
                st: SimTask = obj  # type: ignore[assignment]
                truth[st.task.task_id] = st
                run.kinds[st.task.task_id] = st.task.kind
                for outcome in core.submit(st.task, now):
                    self._end(run, outcome, on_progress)
                self._push_arrival(arrivals)
                spent_s += cost.charge(submits=1)
            elif kind == _WORKER:
                wid, version = obj  # type: ignore[misc]
                if version != self._version[wid]:
                    continue
                worker = self.workers[wid][1]
                for f in worker.pop_finished(at):
                    # Its result is out once the scheduler has handled the completion.
                    spent_s += cost.charge(completes=1)
                    outcome = core.complete(Completion(
                        f.task_id, wid, ok=True, service_s=at - f.start_s,
                        num_prompt_tokens=truth[f.task_id].task.num_prompt_tokens,
                        num_generated_tokens=f.generated, batch_size=f.batch_size),
                        now + spent_s)
                    if outcome is not None:
                        self._end(run, outcome, on_progress)
                self._reschedule(wid)
            elif kind == _SPEED:
                wid, speed = obj  # type: ignore[misc]
                self.workers[wid][1].set_speed(speed, now)
                self._reschedule(wid)
                continue
            elif at != wake_at:
                continue  # superseded by an earlier wake-up
            else:
                wake_at = float("inf")
            now += spent_s  # the pass runs once the event's own work is done
            decisions = core.assign(now)
            for outcome in decisions.ended:
                self._end(run, outcome, on_progress)
            # The pass's work reaches the workers once it is paid for.
            sent_s = now + cost.charge(assigns=len(decisions.assignments))
            if charged:
                busy_until = sent_s
                run.scheduler_busy_s += sent_s - handled_s
            touched = set()
            for p in decisions.preempted:
                generated = self.workers[p.worker_id][1].abort(p.task_id, sent_s)
                if generated and (task := core.resume(p.task_id, generated,
                                                      p.binding)) is not None:
                    # It goes on from where it stopped: a longer prompt, fewer tokens to go.
                    st = truth[p.task_id]
                    truth[p.task_id] = replace(st, task=task,
                                               true_new_tokens=st.true_new_tokens - generated)
                touched.add(p.worker_id)
            for a in decisions.assignments:
                self.workers[a.worker_id][1].add(truth[a.task.task_id], sent_s)
                touched.add(a.worker_id)
            for wid in touched:
                self._reschedule(wid)
            nxt = core.next_expiry_s()
            if nxt is not None and nxt + _TICK_S < wake_at:
                # Expiry is strict (latest start < now), so wake just after it.
                wake_at = max(nxt, now) + _TICK_S
                heapq.heappush(heap, (wake_at, next(self._seq), _WAKE, None))
        run.busy_s = {wid: w.busy_s for wid, (_, w) in self.workers.items()}
        return run

    def _push_arrival(self, arrivals: Iterable[SimTask]) -> None:
        st = next(arrivals, None)  # type: ignore[call-overload]
        if st is not None:
            heapq.heappush(self._heap, (st.arrival_s, next(self._seq), _ARRIVAL, st))

    def _reschedule(self, wid: str) -> None:
        self._version[wid] += 1
        at = self.workers[wid][1].next_event_s()
        if at is not None:
            heapq.heappush(self._heap, (at, next(self._seq), _WORKER, (wid, self._version[wid])))

    def _end(self, run: SimRun, outcome: Outcome,
             on_progress: Callable[[int], None] | None) -> None:
        st = self._truth.pop(outcome.task_id, None)
        if st is not None and st.arrival_s < outcome.submit_s:
            # It waited for a busy scheduler before the core saw it: its latency runs from
            # its arrival, that wait included.
            outcome = replace(outcome, submit_s=st.arrival_s)
        run.outcomes.append(outcome)
        run.end_s = max(run.end_s, outcome.end_s)
        if on_progress is not None:
            on_progress(1)


class Oracle:
    """True service times, for the ``oracle_lct`` policy: real output lengths, real speeds.

    Built before the simulator (the core needs it), then ``bind``-ed to it.
    """

    def __init__(self) -> None:
        self._sim: Simulator | None = None

    def bind(self, sim: Simulator) -> None:
        self._sim = sim

    def _true(self, task: CoreTask, worker_id: str, batch: int) -> float:
        assert self._sim is not None, "Oracle.bind(simulator) first"
        st = self._sim._truth[task.task_id]
        w = self._sim.workers[worker_id][1]
        if isinstance(w, SimLLMWorker):
            return w.speed * w.prior.service_s(task.num_prompt_tokens, st.true_new_tokens, batch)
        return w.speed * st.cpu_service_s

    def service_s(self, task: CoreTask, worker: WorkerLoad) -> float:
        batch = min(len(worker.in_flight) + 1, worker.spec.concurrency)
        return self._true(task, worker.worker_id, batch)

    def idle_service_s(self, task: CoreTask, group: WorkerGroup) -> float:
        return min(self._true(task, wid, 1) for wid in group.members)

    def planned_idle_s(self, task: CoreTask, group: WorkerGroup) -> float:
        return self.idle_service_s(task, group)

    def idle_cases_s(self, task: CoreTask, group: WorkerGroup) -> tuple[float, float]:
        idle_s = self.idle_service_s(task, group)
        return idle_s, idle_s

    def observe(self, task: CoreTask, completion: Completion, now_s: float) -> None:
        return None

    def figures_version(self, task: CoreTask) -> int:
        return 0
