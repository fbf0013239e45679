"""The scheduler actor: Ray and asyncio glue around ``SchedulerService``.

The service (``raysched.service``) keeps the books: accepted tasks, each driver's mailbox of
results, acknowledgements and the task log. This actor owns what needs Ray: it spawns and
registers the worker actors, runs the dispatch loop (late binding: a task is bound to a worker
only when a slot is free), streams each batch to its worker and watches for hangs, wakes the
drivers' long polls, publishes metrics and saves the learned models in Ray's key-value store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

from raysched import _gc
from raysched.config import PoolConfig, SchedulerConfig, resolve_pools
from raysched.core.protocol import (
    ByRef,
    Completion,
    ResultRecord,
    TaskRecord,
    WorkerInfo,
    WorkItem,
)
from raysched.metrics import SchedulerMetrics
from raysched.service import SchedulerService
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
READY_POLL_S = 0.05
# Once every pool can serve, how long ``ready`` still waits for the rest of the workers.
READY_GRACE_S = 5.0
# A ping not answered within this many health periods is left alone (the worker may be
# starting a large model); only an answer that says the actor is dead removes a worker.
PING_TIMEOUT_PERIODS = 5
# Batches for a CPU worker expected to end within this long go as one plain call, not a stream.
PLAIN_CALL_MAX_S = 0.005
# The task log's buffered results and the metrics are written at most this often by the
# dispatch loop (a driver taking results, or a call answering with one, flushes the log
# first): written after every pass, they held the process's lock while a result's answer
# waited to be sent.
FLUSH_PERIOD_S = 0.01


class SchedulerActor:
    """Named async actor; find it with ``ray.get_actor(name, namespace=...)``."""

    def __init__(self, config: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s raysched %(message)s")
        self.config = SchedulerConfig.model_validate(config)
        self.metrics = SchedulerMetrics()
        # The one clock of the scheduler: every time it reads goes through the service.
        self.service = SchedulerService(self.config.build_core(), time.time,
                                        on_result=self._wake_client,
                                        on_outcome=self.metrics.record,
                                        max_start_failures=self.config.max_start_failures)
        self.core = self.service.core
        self.workers: dict[str, Any] = {}  # worker_id -> actor handle
        # A waiting long poll per driver, woken when a result lands in its mailbox.
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._worker_seq = itertools.count()
        self._starting: set[asyncio.Task[Any]] = set()
        self._ending: set[asyncio.Task[Any]] = set()  # express leases being ended
        self._ending_leases: set[str] = set()  # and their ids
        self._started = False
        # Set when there is something new to dispatch: the dispatch loop waits on it.
        self._wake: asyncio.Future[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Create the pools and start the loops; returns the startup notes. Idempotent."""
        if self._started:
            return self.service.notes
        self._started = True
        from actors.engines import real_engines_available

        pools, notes = resolve_pools(self.config, ray.cluster_resources(), real_engines_available())
        for note in notes:
            log.info(note)
        self.service.notes.extend(notes)
        for pool in pools:
            self.service.add_pool(pool)
        self._top_up()
        restored = self._restore_scorer()
        if restored:
            self.service.notes.append(f"restored {restored} learned service-time models "
                                      f"(trusted less until they see new completions)")
        self.service.open_log(TaskLog(_session_dir() / "raysched" / f"{self.config.actor_name}.wal",
                                      fsync=self.config.wal_fsync))
        loop = asyncio.get_running_loop()
        loop.create_task(self._dispatch_loop())
        loop.create_task(self._metrics_loop())
        loop.create_task(self._health_loop())
        _gc.configure()  # and freeze what start-up made (Ray, the modules, the pools)
        return self.service.notes

    async def ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until every pool can serve (a worker registered) or is down (none can start),
        at most ``timeout_s``, then up to ``READY_GRACE_S`` more for the other workers started
        so far; returns ``stats()``, whose ``supervision`` says which pools still wait for
        workers and how long. A worker the cluster cannot place yet never holds this up for
        more than the grace."""
        await self.start()
        give_up_s = time.monotonic() + timeout_s
        supervisor = self.service.supervisor
        while (not all(supervisor.settled(p) for p in supervisor.pools)
               and time.monotonic() < give_up_s):
            await asyncio.sleep(READY_POLL_S)
        if self._starting:
            await asyncio.wait(list(self._starting),
                               timeout=max(0.0, min(READY_GRACE_S, give_up_s - time.monotonic())))
        return self._stats()

    def _top_up(self) -> None:
        """Start the workers the pools are owed (at start, after a loss, after a backoff)."""
        for pool in self.service.supervisor.to_start():
            self._spawn(self.service.pools[pool])

    def _spawn(self, pool: PoolConfig) -> None:
        from actors.cpu_actor import remote_cpu_actor
        from actors.llm_actor import LLMActor

        shard = f"s{self.config.shard}-" if self.config.shards > 1 else ""
        worker_id = f"{pool.name}-{shard}{next(self._worker_seq)}"
        opts = {**WORKER_OPTIONS, "num_cpus": pool.num_cpus, "num_gpus": pool.num_gpus,
                "resources": pool.resources or None, "name": f"raysched-worker-{worker_id}"}
        handle: Any
        if pool.kind == "cpu":
            # Its cancels and pings run on a thread of their own, beside the task in front.
            handle = remote_cpu_actor().options(**opts).remote(worker_id, pool.name)
        else:
            handle = ray.remote(LLMActor).options(**opts).remote(
                worker_id, pool.name, engine=pool.engine, model=pool.model,
                max_batch_size=pool.max_batch_size, max_wait_ms=pool.max_wait_ms,
                time_scale=pool.time_scale, engine_options=pool.engine_options)
        self.service.worker_starting(pool.name, worker_id)
        task = asyncio.get_running_loop().create_task(self._register(worker_id, pool, handle))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _register(self, worker_id: str, pool: PoolConfig, handle: Any) -> None:
        """Hand a worker to the service once it answers with what it is (``WorkerInfo``); a
        worker that dies first is a failed start, retried by ``_top_up`` after a backoff."""
        try:
            info: WorkerInfo = await handle.info.remote()
        except Exception as exc:  # noqa: BLE001 - any failure to come up is a failed start
            log.error("worker %s failed to start: %s", worker_id, exc)
            self.service.start_failed(pool.name, worker_id, _start_error(exc))
            self._top_up()
            return
        self.workers[worker_id] = handle
        self.service.add_worker(info)
        sim = " SIMULATED" if info.simulated else ""
        log.info("worker %s up on node %s: %s%s %s", worker_id, info.node_id[:8],
                 info.engine, sim, info.label)
        self._kick()

    # -- driver API --------------------------------------------------------------------------

    async def submit(self, client_id: str, tasks: list[tuple[Any, ...]]
                     ) -> list[tuple[Any, ...] | None]:
        """Admit a batch of validated tasks (``TaskRecord.to_wire``). Returns, per task, a
        rejection (``ResultRecord.to_wire``) or None.

        Accepted tasks are in the task log before this returns, so a scheduler restart from here
        on runs or reports every one of them.
        """
        await self.start()
        out = self.service.submit(client_id, [TaskRecord.from_wire(t) for t in tasks])
        asyncio.get_running_loop().call_soon(self._dispatch_now)
        return [None if r is None else r.to_wire() for r in out]

    async def run(self, client_id: str, task: tuple[Any, ...], wait_s: float
                  ) -> tuple[Any, ...] | None:
        """``submit`` of one task that waits up to ``wait_s`` for it to end and answers with
        its Result (``ResultRecord.to_wire``): its refusal, the Result it already had (a call
        repeated), or the one it ends with; None when it has not ended by then, and its
        Result then goes to the driver's mailbox as any other's. The pass that starts the task
        runs before the wait, so the worker's call is on its way.

        A Result the call cannot answer with (it stopped waiting the moment the task ended, or
        it was cancelled or failed) goes to the mailbox, so none is lost."""
        await self.start()
        record = TaskRecord.from_wire(task)
        # Logged once the worker's call is on its way (the flush below), not before it.
        refusal = self.service.submit(client_id, [record], flush=False)[0]
        if refusal is not None:
            self.service.flush()
            return refusal.to_wire()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[ResultRecord | None] = loop.create_future()

        def receive(result: ResultRecord) -> None:
            if answer.done():
                self.service.post(client_id, result)
            else:
                answer.set_result(result)

        def give_up() -> None:  # a Result after this goes to the mailbox (``receive``)
            if not answer.done():
                answer.set_result(None)

        if not self.service.claim(record.task_id, receive):
            self.service.flush()
            return None  # it ended within the submit: its Result is in the mailbox
        timer = loop.call_later(wait_s, give_up)
        answered = False
        try:
            self._dispatch_now()
            self.service.flush()  # the task is on record before this call can answer
            result = await answer
            if result is None:
                return None
            self.service.flush()  # what a driver is told is on record
            wire = result.to_wire()
            answered = True
            return wire
        finally:
            timer.cancel()
            self.service.unclaim(record.task_id, receive)
            if (not answered and answer.done() and not answer.cancelled()
                    and (got := answer.result()) is not None):
                self.service.post(client_id, got)

    async def lease(self, client_id: str, pool: str) -> tuple[str, str, Any, dict] | None:
        """An express lease for ``client_id`` on an idle worker of the CPU pool ``pool``
        (``SchedulerService.lease``): ``(lease_id, worker_id, worker handle, cases)``, or None
        when the pool cannot spare a worker now. The driver sends its urgent single tasks
        straight to that worker (``CPUActor.express``) until the lease ends, and reports them
        after (``express_done``). The lease is granted at the worker before this answers."""
        await self.start()
        if not self.config.express_leases:
            return None
        lease = self.service.lease(client_id, pool, uuid.uuid4().hex)
        if lease is None:
            return None
        handle = self.workers.get(lease.worker_id)
        try:
            if handle is None:
                raise RayActorError()
            await handle.grant.remote(lease.lease_id)
        except RayActorError:
            self.service.release(lease.worker_id, lease.lease_id)
            return None
        return lease.lease_id, lease.worker_id, handle, lease.cases

    async def release_leases(self, client_id: str) -> None:
        """End every express lease of ``client_id`` (it is closing)."""
        for worker_id, lease_id in self.service.leases_of(client_id):
            self._end_lease(worker_id, lease_id)

    async def express_done(self, reports: list[tuple[Any, ...]]) -> None:
        """Reports of tasks drivers ran under express leases (``SchedulerService.express_done``):
        counted, measured and learned from like any."""
        self.service.express_done(reports)

    def _end_lease(self, worker_id: str, lease_id: str) -> None:
        """End a lease at its worker, then give the worker back to placement and dispatch.

        The worker answers once the express task it runs (if any) has ended; one that does not
        answer within the hang timeout of the longest task the lease allows is taken as hung,
        as a worker running the scheduler's own work would be: killed (the driver waiting on
        its express task then submits that task to the scheduler)."""
        if lease_id in self._ending_leases:
            return  # asked already (by a dispatch pass, its driver closing, or its age)
        self._ending_leases.add(lease_id)
        handle = self.workers.get(worker_id)
        timeout_s = max(self.config.hang_grace_s,
                        self.config.hang_factor * self.service.lease_longest_s(worker_id))

        async def end() -> None:
            with contextlib.suppress(RayActorError):  # a dead worker: _worker_lost drops it
                if handle is not None:
                    try:
                        await asyncio.wait_for(handle.revoke.remote(lease_id), timeout_s)
                    except asyncio.TimeoutError:
                        self._hung(worker_id, timeout_s)
                        return
                self.service.release(worker_id, lease_id)
                self._kick()

        task = asyncio.get_running_loop().create_task(end())
        self._ending.add(task)  # kept referenced until it ends
        task.add_done_callback(self._ending.discard)
        task.add_done_callback(lambda _: self._ending_leases.discard(lease_id))

    async def ack(self, client_id: str, task_ids: list[str]) -> None:
        """The driver ``client_id`` has received these results (see ``poll``)."""
        await self.start()
        self.service.ack(task_ids, client_id)

    async def poll(self, client_id: str, timeout_s: float = 1.0, max_results: int = 10_000,
                   ack: list[str] | None = None) -> list[tuple[Any, ...]]:
        """Results finished for ``client_id`` since the last poll (``ResultRecord.to_wire``);
        waits up to ``timeout_s``.

        ``ack``: ids of results the driver has received; until acknowledged, a result is
        delivered again after a scheduler restart.
        """
        await self.start()
        self.service.ack(ack or [], client_id)
        if not self.service.has_results(client_id):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[client_id] = waiter
            try:
                await asyncio.wait_for(waiter, timeout_s)
            except asyncio.TimeoutError:
                return []
            finally:
                if self._waiters.get(client_id) is waiter:
                    del self._waiters[client_id]
        return [r.to_wire() for r in self.service.take(client_id, max_results)]

    async def cancel(self, task_ids: list[str], client_id: str | None = None) -> list[bool]:
        """Cancel queued or running tasks; True for each task this call ended. ``client_id``:
        the driver asking, which may end only its own tasks (None: any)."""
        done = self.service.cancel(task_ids, client_id)
        self._abort(done.running_on)
        return done.ended

    async def stats(self) -> dict[str, Any]:
        """Queues, load, result counts, notes, pool configs and learned models: a plain dict."""
        await self.start()
        return self._stats()

    def _stats(self) -> dict[str, Any]:
        stats = self.service.stats()
        stats["shard"], stats["shards"] = self.config.shard, self.config.shards
        return stats

    async def save_scorer(self) -> int:
        """Save the learned models now; returns how many were saved. The models are read here,
        the put (a round trip to the GCS) waits on a thread, not in the dispatch loop's."""
        from ray.experimental.internal_kv import _internal_kv_put

        state = self.core.placement.state()
        if state is None:
            return 0
        saved = len(self.core.placement.learned())  # one row per learned model
        await asyncio.to_thread(_internal_kv_put, self._scorer_key(), json.dumps(state),
                                namespace=KV_NAMESPACE)
        return saved

    def _restore_scorer(self) -> int:
        from ray.experimental.internal_kv import _internal_kv_get

        if self.core.placement.state() is None:
            return 0  # this policy learns nothing, so there is nothing to take up
        raw = _internal_kv_get(self._scorer_key(), namespace=KV_NAMESPACE)
        return self.core.placement.restore(json.loads(raw)) if raw else 0

    def _scorer_key(self) -> str:
        return f"{self.config.actor_name}:scorer"

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
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _wake_client(self, client_id: str) -> None:
        waiter = self._waiters.pop(client_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _dispatch_loop(self) -> None:
        idle_s = self.config.idle_poll_ms / 1e3
        loop = asyncio.get_running_loop()
        flushed_s = 0.0
        while True:
            # A fresh future before the pass, so a kick during the pass is not lost.
            self._wake = wake = loop.create_future()
            try:
                self._dispatch_once()
            except Exception:  # keep dispatching: one bad pass must not stop the scheduler
                log.exception("dispatch pass failed")
            # Sleep until new work, a completion, or the next expiry, whichever comes first;
            # and until the next flush while something waits to be written.
            timeout_s = self.service.sleep_s(idle_s)
            now_s = time.monotonic()
            if now_s - flushed_s >= FLUSH_PERIOD_S:
                flushed_s = now_s
                try:
                    self.service.flush()
                    self.metrics.flush()
                except Exception:  # a full disk or a metrics error must not stop dispatching
                    log.exception("flushing the task log or the metrics failed")
            elif self.metrics.pending() or self.service.unflushed():
                timeout_s = min(timeout_s, FLUSH_PERIOD_S - (now_s - flushed_s))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake, timeout_s)

    def _dispatch_once(self) -> None:
        """Expire, take back, assign, and send each worker its batch in one call, issued here
        (not when the task that waits for its answer first runs)."""
        dispatch = self.service.assign()
        self._abort(dispatch.take_back)
        for worker_id, lease_id in dispatch.revoke:
            self._end_lease(worker_id, lease_id)
        loop = asyncio.get_running_loop()
        for batch in dispatch.batches:
            timeout_s = max(self.config.hang_grace_s, self.config.hang_factor * batch.expected_s)
            pool = self.service.pool_of(batch.worker_id)
            # A short batch on a CPU worker is one plain call: a stream costs a message per
            # group, more than the wait for the batch's last task.
            plain = (pool is not None and pool.kind == "cpu"
                     and batch.expected_s <= PLAIN_CALL_MAX_S)
            handle = self.workers.get(batch.worker_id)
            sent_s = time.monotonic() if batch.idle else None
            call: Any = None
            if handle is not None:
                call = (handle.run.remote([i.to_wire() for i in batch.items]) if plain
                        else handle.execute.remote(batch.items))
            loop.create_task(self._run_batch(batch.worker_id, batch.items, call, timeout_s,
                                             sent_s, plain))

    def _dispatch_now(self) -> None:
        """A dispatch pass at once (after a submit), not when the loop next runs; the loop is
        woken too, to sleep again only until the new tasks' expiry and to flush."""
        try:
            self._dispatch_once()
        except Exception:  # the dispatch loop tries again; the tasks are accepted either way
            log.exception("dispatch pass after a submit failed")
        self._kick()

    def _abort(self, task_ids_by_worker: dict[str, list[str]]) -> None:
        """Ask workers to drop tasks the core no longer wants from them. An LLM worker stops the
        sequence mid-batch; a CPU worker skips a task it has not started (one it is running runs
        to its end). Fire and forget: the core ignores whatever they report for these."""
        issued_s = self.service.clock()
        for worker_id, ids in task_ids_by_worker.items():
            handle = self.workers.get(worker_id)
            if handle is not None:
                handle.abort.remote(ids, issued_s)

    async def _run_batch(self, worker_id: str, items: list[WorkItem], call: Any,
                         timeout_s: float, sent_s: float | None, plain: bool) -> None:
        """Take a worker's answers to one call carrying a batch (``call``: None when the worker
        is gone): a stream whose completions come back as they end, or with ``plain`` the
        refs of one answer with all of them (``CPUActor.run``).

        A worker that sends nothing for ``timeout_s`` is taken as hung, not waited on: it is
        killed, and its tasks are retried elsewhere like those of any lost worker. ``sent_s``
        (the call's time, when the worker was idle): the wait for its first report less that
        report's work is its round trip, which sets how deep its prefetch goes. Large outputs
        stay in the object store (this actor owns them, as the caller): the completions carry
        refs to them.
        """
        unfinished = {item.task_id for item in items}
        try:
            if call is None:
                raise RayActorError()
            if plain:
                done_ref, outputs_ref = call
                # The answer's future awaited as it is, the hang watched by a timer (a wait_for
                # around it cost a loop turn, 0.07 ms of every short task's latency). A timer
                # that runs late, beside the answer, finds it there and kills nothing.
                answer = done_ref.future()

                def on_timeout() -> None:
                    if not answer.done():
                        self._hung(worker_id, timeout_s)

                hung = asyncio.get_running_loop().call_later(timeout_s, on_timeout)
                try:
                    rows = await asyncio.wrap_future(answer)
                finally:
                    hung.cancel()
                completions = [Completion(*t) for t in rows]
                if any(isinstance(c.output, ByRef) for c in completions):
                    completions = _with_output_refs(completions, outputs_ref)
                self._completed(worker_id, completions, sent_s)
                return
            stream = call.__aiter__()
            while True:
                ref = await asyncio.wait_for(stream.__anext__(), timeout_s)
                completions = await ref
                if any(isinstance(c.output, ByRef) for c in completions):
                    completions = _with_output_refs(
                        completions, await asyncio.wait_for(stream.__anext__(), timeout_s))
                self._completed(worker_id, completions, sent_s)
                sent_s = None
                unfinished.difference_update(c.task_id for c in completions)
        except StopAsyncIteration:
            if unfinished:  # the stream ended without a report for these: they end here
                self.service.fail(worker_id, unfinished,
                                  "the worker's stream ended without a report for it")
                self._kick()
        except asyncio.TimeoutError:
            self._hung(worker_id, timeout_s)
        except RayActorError as exc:
            self._worker_lost(worker_id, f"worker died: {type(exc).__name__}")
        except Exception as exc:  # the call failed without killing the worker
            log.warning("call to worker %s failed; its %d unfinished tasks fail", worker_id,
                        len(unfinished), exc_info=True)
            self.service.fail(worker_id, unfinished, f"worker call failed: {exc!r}")
            self._kick()

    def _hung(self, worker_id: str, timeout_s: float) -> None:
        """A worker that sent nothing for ``timeout_s``: killed, its tasks retried elsewhere
        (the call waiting on it then fails, and finds the loss handled)."""
        handle = self.workers.get(worker_id)
        if handle is not None:
            ray.kill(handle, no_restart=True)
        self._worker_lost(worker_id, f"worker hung: no result for {timeout_s:.1f} s")

    def _completed(self, worker_id: str, completions: list[Completion],
                   sent_s: float | None) -> None:
        """Hand a worker's report to the service. ``sent_s``: when the batch went to an idle
        worker (its first report, less that report's work, measures the round trip)."""
        if sent_s is not None:
            self.service.round_trip(worker_id, time.monotonic() - sent_s
                                    - sum(c.service_s for c in completions))
        self.service.complete(completions)
        self._kick()

    def _worker_lost(self, worker_id: str, reason: str) -> None:
        if self.workers.pop(worker_id, None) is None:
            return  # already handled: a hang and a death can both report one loss
        log.warning("worker %s lost (%s); requeueing its tasks and starting a replacement",
                    worker_id, reason)
        self.service.worker_lost(worker_id, reason)
        self._top_up()
        self._kick()

    async def _health_loop(self) -> None:
        """Ping every worker each ``health_check_s``: one that died while idle is replaced now,
        not when work is next sent to it; and pools waiting out a start backoff are topped up.
        Only a dead actor counts; a slow answer is left to the hang detection of its work."""
        period_s = self.config.health_check_s
        while True:
            await asyncio.sleep(period_s)
            self._top_up()
            for worker_id, lease_id in self.service.stale_leases():
                self._end_lease(worker_id, lease_id)
            workers = list(self.workers.items())
            if not workers:
                continue
            answers = await asyncio.gather(
                *(asyncio.wait_for(h.ping.remote(), period_s * PING_TIMEOUT_PERIODS)
                  for _, h in workers), return_exceptions=True)
            for (worker_id, _), answer in zip(workers, answers, strict=True):
                if isinstance(answer, RayActorError):
                    self._worker_lost(worker_id, f"worker died: health check failed "
                                                 f"({type(answer).__name__})")

    async def _metrics_loop(self) -> None:
        save_every = max(1, round(SCORER_SAVE_PERIOD_S / METRICS_PERIOD_S))
        freeze_every = max(1, round(_gc.FREEZE_PERIOD_S / METRICS_PERIOD_S))
        for tick in itertools.count(1):
            await asyncio.sleep(METRICS_PERIOD_S)
            self.metrics.publish(self.service.load())
            if tick % freeze_every == 0:
                _gc.freeze()  # full collections skip what is long-lived (raysched._gc)
            if tick % save_every == 0:
                try:
                    await self.save_scorer()
                except Exception:  # saving is best effort: the scheduler keeps serving
                    log.exception("could not save the learned models")


def _with_output_refs(completions: list[Completion], outputs_ref: Any) -> list[Completion]:
    """Point each completion whose output stayed behind (``ByRef`` without a ref) at the list
    of outputs its worker sent next, without fetching it."""
    return [replace(c, output=ByRef(outputs_ref, c.output.size_bytes, c.output.index))
            if isinstance(c.output, ByRef) else c for c in completions]


def _start_error(exc: BaseException) -> str:
    """What made a worker die before it registered, in one line. Ray's error for an actor
    whose constructor raised ends with that exception ("ValueError: ..."): take that line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = lines[-1] if lines else ""
    return f"{type(exc).__name__}: {cause}"[:300]


def _session_dir() -> Path:
    """This Ray session's directory on this node: the task log lives there, so a new session
    (a new cluster) never replays an old one's tasks."""
    context = ray.get_runtime_context()
    if hasattr(context, "get_session_name"):
        # Recent Ray makes both parts public; Ray itself joins them the same way.
        return Path(context.get_temp_dir()) / context.get_session_name()
    # Older Ray (the floor is 2.40) has no public API for the session directory or name.
    return Path(ray._private.worker.global_worker.node.get_session_dir_path())
