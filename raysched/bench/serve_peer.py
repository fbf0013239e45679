"""``--peer ray-serve``: the same workload through Ray Serve, the peer a Ray user deploys today.

Measured, not modelled. Each pool of the benchmark cluster becomes one Serve application with
one deployment:

- ``num_replicas = pool.count``, no autoscaling, and Serve's default request router (power of
  two choices over the replicas' queue lengths).
- ``max_ongoing_requests``: Serve's default, 5 (since Ray 2.32; "Configure Ray Serve
  deployments" in Ray's docs), on the CPU pool, so a few requests wait at each replica rather
  than in the router; a replica still runs one at a time (a CPU-bound task holds its core), as
  raysched's CPU workers do. ``max_batch_size`` on an LLM pool, where the batch is what a
  replica runs at once. ``max_queued_requests`` stays at Serve's default (no limit): requests
  beyond the replicas' capacity wait in the caller's queue, and nothing is ever rejected or
  expired.
- The same CPU share per replica as raysched's workers (``replay.CPU_WORKER_CPUS``, 0.25 CPU,
  on the CPU pool; ``replay.LLM_WORKER_CPUS``, 0.1, on an LLM pool).
- A CPU replica sleeps for the task's service time (``replay.simulated_cpu_work``, a sync
  method, which Serve runs in its thread pool). An LLM replica owns an ``actors.llm_actor.
  LLMActor`` on the simulated engine of the pool's preset, with the pool's ``max_batch_size``
  and the run's ``time_scale``, and answers each request by running one ``WorkItem`` through
  its continuous batcher, so the engine timing is the one raysched's workers have. Serve
  knows no priorities or deadlines, so every item enters the batcher with the same priority
  and deadline (first come, first served).

The driver starts Serve without an HTTP proxy (handles only; ``http_options`` on 127.0.0.1 in
case a proxy is ever started), warms each deployment with one request, then replays the tasks
at their scaled arrival times through ``DeploymentHandle.remote`` from an asyncio loop, each
response awaited in its own task so that submission never waits for a result. A request's
latency runs from just before ``handle.remote`` to its result arriving in the driver;
``deadline_met`` is ``latency <= (deadline_s - arrival_s) * time_scale``. Records come back in
the simulator's units (times divided by ``time_scale``) and Serve is shut down at the end; the
Ray instance is the caller's and stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from raysched.bench.replay import CPU_WORKER_CPUS, LLM_WORKER_CPUS, simulated_cpu_work
from raysched.bench.report import Record
from raysched.bench.workloads import PoolSpec
from raysched.core.types import CHARS_PER_TOKEN
from raysched.sim.workers import SimTask

log = logging.getLogger(__name__)

# Serve's default max_ongoing_requests (Ray 2.32 and later), used on the CPU pool.
SERVE_DEFAULT_ONGOING = 5
APP_PREFIX = "raysched-peer-"
SERVE_LOGGING = {"log_level": "WARNING", "enable_access_log": False}


def _replica_id() -> str:
    from ray import serve

    return serve.get_replica_context().replica_id.unique_id


class CPUReplica:
    """One CPU worker: holds the replica for the task's (scaled) service time, one task at a
    time (Serve runs a sync method in a thread pool, up to ``max_ongoing_requests`` at once;
    a sleep would overlap where CPU work could not)."""

    def __init__(self) -> None:
        import threading

        self.replica = _replica_id()
        self._core = threading.Lock()

    def __call__(self, seconds: float) -> str:
        with self._core:
            simulated_cpu_work(seconds)
        return self.replica


class LLMReplica:
    """One LLM worker: raysched's LLMActor (continuous batching, simulated engine) inside."""

    def __init__(self, pool: str, preset: str, max_batch_size: int, time_scale: float) -> None:
        from actors.llm_actor import LLMActor

        self.replica = _replica_id()
        self.actor = LLMActor(self.replica, pool, engine="sim", model=preset,
                              max_batch_size=max_batch_size, time_scale=time_scale)

    async def __call__(self, task_id: str, kind: str, prompt: str, max_new_tokens: int) -> str:
        from raysched.core.protocol import WorkItem, WorkPayload

        # No priorities or deadlines in Serve: every request is equal in the batcher's queue.
        item = WorkItem(task_id, kind, 0, 0.0,
                        WorkPayload(prompt=prompt, max_new_tokens=max_new_tokens))
        async for done in self.actor.execute([item]):
            for c in done:
                if not c.ok:
                    raise RuntimeError(f"{task_id}: {c.error}")
        return self.replica


def _deploy(cluster: tuple[PoolSpec, ...], time_scale: float) -> dict[str, Any]:
    """One application per pool; returns their handles by pool name."""
    from ray import serve

    serve.start(proxy_location="Disabled", http_options={"host": "127.0.0.1"},
                logging_config=SERVE_LOGGING)
    handles = {}
    for p in cluster:
        if p.preset == "cpu":
            app = serve.deployment(
                name=p.name, num_replicas=p.count, max_ongoing_requests=SERVE_DEFAULT_ONGOING,
                ray_actor_options={"num_cpus": CPU_WORKER_CPUS})(CPUReplica).bind()
        else:
            app = serve.deployment(
                name=p.name, num_replicas=p.count, max_ongoing_requests=p.max_batch_size,
                ray_actor_options={"num_cpus": LLM_WORKER_CPUS})(LLMReplica).bind(
                    p.name, p.preset, p.max_batch_size, time_scale)
        handles[p.name] = serve.run(app, name=APP_PREFIX + p.name, route_prefix=None,
                                    logging_config=SERVE_LOGGING)
    return handles


def _request(handle: Any, st: SimTask, time_scale: float) -> Any:
    t = st.task
    if t.pool.startswith("llm"):
        return handle.remote(t.task_id, t.kind, "x" * (t.num_prompt_tokens * CHARS_PER_TOKEN),
                             st.true_new_tokens)
    return handle.remote(st.cpu_service_s * time_scale)


async def _warm(handles: dict[str, Any], cluster: tuple[PoolSpec, ...]) -> None:
    """One request per deployment, so every handle's router knows its replicas."""
    calls = []
    for p in cluster:
        h = handles[p.name]
        calls.append(h.remote(0.0) if p.preset == "cpu" else h.remote("warm", "warm", "x", 1))
    await asyncio.gather(*calls)


async def _replay(handles: dict[str, Any], cluster: tuple[PoolSpec, ...], tasks: list[SimTask],
                  time_scale: float, progress: Any, bar: Any
                  ) -> tuple[list[tuple[float, float, str, BaseException | None]], float]:
    """Submit at the scaled arrival times; per task (submit, end, replica, error), and the span."""
    await _warm(handles, cluster)
    out: list[Any] = [None] * len(tasks)
    finished = 0

    async def collect(i: int, response: Any, submitted: float) -> None:
        nonlocal finished
        replica, error = "", None
        try:
            replica = await response
        except Exception as exc:  # noqa: BLE001 - reported as a failed task, never raised
            error = exc
        out[i] = (submitted, time.monotonic(), replica, error)
        finished += 1
        if progress is not None:
            progress.update(bar, completed=finished)

    pending = []
    start = time.monotonic()
    for i, st in enumerate(tasks):
        delay = start + st.arrival_s * time_scale - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        submitted = time.monotonic()
        response = _request(handles[st.task.pool], st, time_scale)
        pending.append(asyncio.ensure_future(collect(i, response, submitted)))
    await asyncio.gather(*pending)
    return [(s - start, e - start, r, err) for s, e, r, err in out], time.monotonic() - start


class _ProbeTimeouts(logging.Filter):
    """Counts, and drops, the router's "Failed to get queue length" warnings."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Failed to get queue length"):
            self.count += 1
            return False
        return True


@contextlib.contextmanager
def _quiet_serve() -> Iterator[_ProbeTimeouts]:
    """While the peer runs: Serve's driver-side INFO lines off, and its router's queue-length
    probe timeouts counted instead of printed one by one (they would bury the progress bar)."""
    logger = logging.getLogger("ray.serve")
    level = logger.level
    probes = _ProbeTimeouts()
    logger.addFilter(probes)
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield probes
    finally:
        logger.removeFilter(probes)
        logger.setLevel(level)


def _run_loop(coro: Any) -> Any:
    """``asyncio.run``, in a thread of its own if the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    th = threading.Thread(target=target, name="serve-peer-replay")
    th.start()
    th.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def run_serve(tasks: list[SimTask], cluster: tuple[PoolSpec, ...], time_scale: float,
              progress: Any = None, bar: Any = None) -> tuple[list[Record], float]:
    """Replay ``tasks`` on Ray Serve; returns one Record per task and the run's wall span (s).

    Needs a running Ray (the caller's, left running) and ``ray[serve]``.
    """
    from ray import serve

    pools = {p.name for p in cluster}
    missing = sorted({st.task.pool for st in tasks} - pools)
    if missing:
        raise ValueError(f"tasks name pools the cluster lacks: {missing}")
    with _quiet_serve() as probes:
        try:
            handles = _deploy(cluster, time_scale)
            timings, span = _run_loop(_replay(handles, cluster, tasks, time_scale, progress,
                                              bar))
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]
    if probes.count:
        log.warning("ray-serve peer: Serve's router timed out %d queue-length probes of its "
                    "replicas (the replicas answered slower than its 0.1 s+ deadlines)",
                    probes.count)
    names: dict[str, str] = {}
    per_pool: dict[str, int] = {}
    records = []
    failures = []
    for st, (submitted, ended, replica, error) in zip(tasks, timings, strict=True):
        t = st.task
        latency = ended - submitted
        if replica and replica not in names:
            names[replica] = f"{t.pool}-{per_pool.get(t.pool, 0)}"
            per_pool[t.pool] = per_pool.get(t.pool, 0) + 1
        if error is not None:
            failures.append(f"{t.task_id}: {type(error).__name__}: {error}")
        met = error is None and latency <= (t.deadline_s - st.arrival_s) * time_scale
        records.append(Record(t.task_id, int(t.priority), "failed" if error else "completed",
                              met, latency / time_scale * 1e3, names.get(replica, ""),
                              ended / time_scale))
    if failures:
        log.warning("ray-serve peer: %d of %d requests failed, e.g. %s", len(failures),
                    len(tasks), "; ".join(failures[:3]))
    return records, span
