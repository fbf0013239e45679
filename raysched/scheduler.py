"""The scheduler actor: a thin asyncio driver around ``SchedulerCore``.

It owns the worker actors, feeds the core with submissions and completions, runs the dispatch
loop (late binding: a task is bound to a worker only when a slot is free), and keeps each
driver's finished results in a mailbox the driver long-polls, many results per call.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

from raysched.config import PoolConfig, SchedulerConfig, resolve_pools
from raysched.core import Outcome, SchedulerCore, WorkerSpec
from raysched.core.adaptive import AdaptiveEstimator
from raysched.core.protocol import Completion, WorkerInfo, WorkItem
from raysched.core.types import Status
from raysched.metrics import SchedulerMetrics
from raysched.models import Result, Task
from raysched.wal import TaskLog

log = logging.getLogger("raysched")
# Worker actors that die are restarted by the scheduler, not by Ray, so their lost tasks are
# requeued at once instead of waiting in a restarting actor.
WORKER_OPTIONS: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0}
METRICS_PERIOD_S = 1.0
# The learned service-time models are saved this often to the GCS key-value store, which lives
# on the head node and outlives the scheduler actor, so a restart does not relearn from zero.
SCORER_SAVE_PERIOD_S = 10.0
KV_NAMESPACE = "raysched"


@dataclass
class _Mailbox:
    results: list[Result] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Pending:
    task: Task
    client_id: str


class SchedulerActor:
    """Named async actor; find it with ``ray.get_actor(name, namespace=...)``."""

    def __init__(self, config: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s raysched %(message)s")
        self.config = SchedulerConfig.model_validate(config)
        self.core: SchedulerCore = self.config.build_core()
        self.pools: dict[str, PoolConfig] = {}
        self.notes: list[str] = []
        self.workers: dict[str, Any] = {}  # worker_id -> actor handle
        self.worker_info: dict[str, WorkerInfo] = {}
        self._pending: dict[str, _Pending] = {}
        self._mailboxes: dict[str, _Mailbox] = defaultdict(_Mailbox)
        self._worker_seq = itertools.count()
        self._starting: set[asyncio.Task[Any]] = set()
        self._started = False
        self._wake: asyncio.Event | None = None
        self.metrics = SchedulerMetrics()
        self.started_s = time.time()
        self.log: TaskLog | None = None
        # Results handed to drivers but not yet acknowledged: replayed after a restart.
        self._unacked: dict[str, tuple[str, Result]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Create the pools and start the loops; returns the startup notes. Idempotent."""
        if self._started:
            return self.notes
        self._started = True
        self._wake = asyncio.Event()
        from actors.engines import real_engines_available

        pools, notes = resolve_pools(self.config, ray.cluster_resources(), real_engines_available())
        self.notes = notes
        for note in notes:
            log.info(note)
        for pool in pools:
            self.pools[pool.name] = pool
            self.core.add_pool(pool.name)
            for _ in range(int(pool.replicas)):
                self._spawn(pool)
        restored = self._restore_scorer()
        if restored:
            self.notes.append(f"restored {restored} learned service-time models (trusted less "
                              f"until they see new completions)")
        self._open_log()
        loop = asyncio.get_running_loop()
        loop.create_task(self._dispatch_loop())
        loop.create_task(self._metrics_loop())
        return self.notes

    def _open_log(self) -> None:
        """Open the task log; after a restart, take up what the previous incarnation owed."""
        session_dir = ray._private.worker.global_worker.node.get_session_dir_path()
        self.log = TaskLog(Path(session_dir) / "raysched" / f"{self.config.name}.wal",
                           fsync=self.config.wal_fsync)
        pending, unacked = self.log.replay()
        if not pending and not unacked:
            return
        now = time.time()
        for task_id, (client_id, result) in unacked.items():
            self._unacked[task_id] = (client_id, result)
            self._mailboxes[client_id].results.append(result)
        rerun = 0
        for task_id, (client_id, task, deadline_s) in pending.items():
            core_task = replace(task.to_core(now), deadline_s=deadline_s)
            outcome = self.core.submit(core_task, now)
            self._pending[task_id] = _Pending(task, client_id)
            if outcome is None:
                rerun += 1
            else:
                self._deliver(replace(outcome, reason=f"after a scheduler restart: {outcome.reason}"))
        note = (f"restarted: {rerun} accepted tasks queued to run again, "
                f"{len(pending) - rerun} reported as rejected, {len(unacked)} results to deliver")
        log.warning(note)
        self.notes.append(note)
        self.log.flush()

    async def ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until every worker started so far has registered; returns ``stats()``."""
        await self.start()
        if self._starting:
            await asyncio.wait(list(self._starting), timeout=timeout_s)
        return self._stats()

    def _spawn(self, pool: PoolConfig) -> None:
        from actors.cpu_actor import CPUActor
        from actors.llm_actor import LLMActor

        worker_id = f"{pool.name}-{next(self._worker_seq)}"
        opts = {**WORKER_OPTIONS, "num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus,
                "resources": pool.resources or None, "name": f"raysched-worker-{worker_id}"}
        if pool.kind == "cpu":
            handle = ray.remote(CPUActor).options(**opts).remote(worker_id, pool.name)
        else:
            handle = ray.remote(LLMActor).options(**opts).remote(
                worker_id, pool.name, engine=pool.engine, model=pool.model,
                max_batch_size=pool.max_batch_size, max_wait_ms=pool.max_wait_ms,
                time_scale=pool.time_scale, engine_options=pool.engine_options)
        task = asyncio.get_running_loop().create_task(self._register(worker_id, pool, handle))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _register(self, worker_id: str, pool: PoolConfig, handle: Any) -> None:
        """Add a worker to the core once it answers; its engine supplies the service prior."""
        try:
            info = await handle.info.remote()
        except RayActorError as exc:
            log.error("worker %s failed to start: %s", worker_id, exc)
            return
        self.workers[worker_id] = handle
        self.worker_info[worker_id] = info
        spec = WorkerSpec(worker_id=worker_id, pool=pool.name, slots=pool.worker_slots,
                          concurrency=pool.concurrency, prior=info.prior,
                          max_context_tokens=info.max_context_tokens, node_id=info.node_id)
        self.core.add_worker(spec, time.time())
        sim = " SIMULATED" if info.simulated else ""
        log.info("worker %s up on node %s: %s%s %s", worker_id, info.node_id[:8],
                 info.engine, sim, info.label)
        self._kick()

    # -- driver API --------------------------------------------------------------------------

    async def submit(self, client_id: str, tasks: list[Task]) -> list[Result | None]:
        """Admit a batch of validated tasks. Returns, per task, a rejection Result or None.

        Accepted tasks are in the task log before this returns, so a scheduler restart from here
        on runs or reports every one of them.
        """
        await self.start()
        now = time.time()
        out: list[Result | None] = []
        accepted: list[tuple[Task, float]] = []
        for task in tasks:
            owner = self._pending.get(task.id)
            done = self._unacked.get(task.id)
            if (owner and owner.client_id == client_id) or (done and done[0] == client_id):
                out.append(None)  # a repeated call: already accepted, its Result will come
                continue
            if owner or done:
                out.append(self._rejection(task, now, f"task id {task.id!r} is already in the "
                                                      f"scheduler"))
                continue
            core_task = task.to_core(now)
            outcome = self.core.submit(core_task, now)
            if outcome is None:
                self._pending[task.id] = _Pending(task, client_id)
                accepted.append((task, core_task.deadline_s))
                out.append(None)
            else:
                result = self._result(outcome, task.kind)
                self.metrics.record(outcome)
                out.append(result)
        if accepted and self.log is not None:
            self.log.accepted(client_id, accepted)
            self.log.flush()
        self._kick()
        return out

    async def poll(self, client_id: str, timeout_s: float = 1.0, max_results: int = 10_000,
                   ack: list[str] | None = None) -> list[Result]:
        """Results finished for ``client_id`` since the last poll; waits up to ``timeout_s``.

        ``ack``: ids of results the driver has received; until acknowledged, a result is
        delivered again after a scheduler restart.
        """
        await self.start()
        if ack:
            for task_id in ack:
                self._unacked.pop(task_id, None)
            if self.log is not None:
                self.log.acked(ack)
        box = self._mailboxes[client_id]
        if not box.results:
            box.event.clear()
            try:
                await asyncio.wait_for(box.event.wait(), timeout_s)
            except asyncio.TimeoutError:
                return []
        taken, box.results = box.results[:max_results], box.results[max_results:]
        if self.log is not None:
            self.log.flush()  # what a driver is told is in the log first
        return taken

    async def cancel(self, task_ids: list[str]) -> list[bool]:
        """Cancel queued or running tasks; True for each task this call ended."""
        now = time.time()
        ended = []
        abort: dict[str, list[str]] = defaultdict(list)
        for task_id in task_ids:
            worker_id = self.core.table.worker_of(task_id)
            outcome = self.core.cancel(task_id, now)
            ended.append(outcome is not None)
            if outcome is not None:
                self._deliver(outcome)
                if worker_id is not None:
                    abort[worker_id].append(task_id)
        for worker_id, ids in abort.items():
            handle = self.workers.get(worker_id)
            if handle is not None and self.pools[self.worker_info[worker_id].pool].kind == "llm":
                handle.abort.remote(ids)
        return ended

    async def stats(self) -> dict[str, Any]:
        await self.start()
        return self._stats()

    def _stats(self) -> dict[str, Any]:
        now = time.time()
        stats = self.core.stats(now)
        stats["notes"] = list(self.notes)
        stats["uptime_s"] = now - self.started_s
        stats["queued"] = self.core.queued()
        stats["running"] = self.core.running()
        for worker_id, w in stats["workers"].items():
            info = self.worker_info.get(worker_id)
            if info is not None:
                w.update(engine=info.engine, simulated=info.simulated, node_id=info.node_id)
        stats["pool_config"] = {name: p.model_dump() for name, p in self.pools.items()}
        estimator = self._estimator()
        stats["learned"] = estimator.table() if estimator is not None else []
        return stats

    def save_scorer(self) -> int:
        """Save the learned models now; returns how many were saved."""
        from ray.experimental.internal_kv import _internal_kv_put

        estimator = self._estimator()
        if estimator is None:
            return 0
        state = estimator.state()
        _internal_kv_put(self._scorer_key(), json.dumps(state), namespace=KV_NAMESPACE)
        return len(state["models"])

    def _restore_scorer(self) -> int:
        from ray.experimental.internal_kv import _internal_kv_get

        estimator = self._estimator()
        if estimator is None:
            return 0
        raw = _internal_kv_get(self._scorer_key(), namespace=KV_NAMESPACE)
        if not raw:
            return 0
        state = json.loads(raw)
        estimator.restore(state)
        return len(state.get("models", []))

    def _scorer_key(self) -> str:
        return f"{self.config.name}:scorer"

    def _estimator(self) -> AdaptiveEstimator | None:
        """The learned model, for policies that learn one."""
        est = getattr(self.core.placement, "estimator", None)
        return est if isinstance(est, AdaptiveEstimator) else None

    async def kill_worker(self, worker_id: str) -> bool:
        """Kill a worker actor (for fault drills); the scheduler notices and replaces it."""
        handle = self.workers.get(worker_id)
        if handle is None:
            return False
        ray.kill(handle, no_restart=True)
        return True

    async def set_worker_speed(self, worker_id: str, speed: float) -> None:
        """Slow a simulated worker down without telling the scheduler (for drills)."""
        await self.workers[worker_id].set_speed.remote(speed)

    # -- loops -------------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _dispatch_loop(self) -> None:
        assert self._wake is not None
        idle_s = self.config.idle_poll_ms / 1e3
        while True:
            self._wake.clear()
            try:
                now = self._dispatch_once()
            except Exception:  # keep dispatching: one bad pass must not stop the scheduler
                log.exception("dispatch pass failed")
                now = time.time()
            # Sleep until new work, a completion, or the next expiry, whichever comes first.
            next_expiry = self.core.next_expiry_s()
            timeout = idle_s if next_expiry is None else min(idle_s, max(0.0, next_expiry - now))
            if self.log is not None:
                self.log.flush()
                if self.log.needs_compaction():
                    self._compact_log()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _dispatch_once(self) -> float:
        """Expire, assign, and send each worker its batch in one streaming call."""
        now = time.time()
        decisions = self.core.assign(now)
        for outcome in decisions.ended:
            self._deliver(outcome)
        batches: dict[str, list[WorkItem]] = defaultdict(list)
        expected_s: dict[str, float] = defaultdict(float)
        for a in decisions.assignments:
            payload = self._pending[a.task.task_id].task.payload
            batches[a.worker_id].append(WorkItem(a.task.task_id, a.task.kind, int(a.task.priority),
                                                 a.task.deadline_s, payload))
            expected_s[a.worker_id] = max(expected_s[a.worker_id], a.predicted_finish_s - now)
        for worker_id, items in batches.items():
            timeout_s = max(self.config.hang_grace_s,
                            self.config.hang_factor * expected_s[worker_id])
            asyncio.get_running_loop().create_task(self._run_batch(worker_id, items, timeout_s))
        return now

    async def _run_batch(self, worker_id: str, items: list[WorkItem], timeout_s: float) -> None:
        """One streaming call carries a batch to a worker; completions come back as they end.

        A worker that streams nothing for ``timeout_s`` is taken as hung, not waited on: it is
        killed, and its tasks are retried elsewhere like those of any lost worker.
        """
        handle = self.workers.get(worker_id)
        unfinished = {item.task_id for item in items}
        try:
            if handle is None:
                raise RayActorError()
            stream = handle.execute.remote(items).__aiter__()
            while True:
                try:
                    ref = await asyncio.wait_for(stream.__anext__(), timeout_s)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    ray.kill(handle, no_restart=True)
                    self._worker_lost(worker_id, f"worker hung: no result for {timeout_s:.1f} s")
                    return
                completions: list[Completion] = await ref
                now = time.time()
                for c in completions:
                    unfinished.discard(c.task_id)
                    outcome = self.core.complete(c, now)
                    if outcome is not None:
                        self._deliver(outcome)
                self._kick()
        except RayActorError as exc:
            self._worker_lost(worker_id, f"worker died: {type(exc).__name__}")
        except Exception as exc:  # the call failed without killing the worker
            now = time.time()
            for task_id in unfinished:
                outcome = self.core.complete(Completion(task_id, worker_id, ok=False, service_s=0.0,
                                                        error=f"worker call failed: {exc!r}"), now)
                if outcome is not None:
                    self._deliver(outcome)
            self._kick()

    def _worker_lost(self, worker_id: str, reason: str) -> None:
        if worker_id not in self.workers:
            return
        del self.workers[worker_id]
        info = self.worker_info.pop(worker_id)
        log.warning("worker %s lost (%s); requeueing its tasks and starting a replacement",
                    worker_id, reason)
        for outcome in self.core.worker_lost(worker_id, time.time(), reason):
            self._deliver(outcome)
        self._spawn(self.pools[info.pool])
        self._kick()

    async def _metrics_loop(self) -> None:
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(METRICS_PERIOD_S)
            self.metrics.publish(self.core.stats(time.time()))
            if time.monotonic() - last_save >= SCORER_SAVE_PERIOD_S:
                last_save = time.monotonic()
                try:
                    self.save_scorer()
                except Exception:  # saving is best effort: the scheduler keeps serving
                    log.exception("could not save the learned models")

    # -- results -----------------------------------------------------------------------------

    def _deliver(self, outcome: Outcome) -> None:
        pending = self._pending.pop(outcome.task_id, None)
        if pending is None:
            return
        self.metrics.record(outcome)
        result = self._result(outcome, pending.task.kind)
        self._unacked[outcome.task_id] = (pending.client_id, result)
        if self.log is not None:
            self.log.ended([(pending.client_id, result)])
        box = self._mailboxes[pending.client_id]
        box.results.append(result)
        box.event.set()

    def _compact_log(self) -> None:
        assert self.log is not None
        pending = {tid: (p.client_id, p.task, self.core.deadline_of(tid))
                   for tid, p in self._pending.items()}
        self.log.compact(pending, self._unacked)

    def _rejection(self, task: Task, now: float, reason: str) -> Result:
        return Result(task_id=task.id, status=Status.REJECTED, reason=reason, kind=task.kind,
                      priority=task.priority, pool=task.pool)

    @staticmethod
    def _result(o: Outcome, kind: str) -> Result:
        started = o.start_s if o.start_s is not None else o.end_s
        return Result(task_id=o.task_id, status=o.status, output=o.output, reason=o.reason,
                      worker_id=o.worker_id, kind=kind, priority=o.priority, pool=o.pool,
                      queue_s=started - o.submit_s, service_s=o.end_s - started,
                      total_s=o.end_s - o.submit_s, deadline_met=o.deadline_met,
                      attempts=o.attempts)
