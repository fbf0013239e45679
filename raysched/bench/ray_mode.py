"""``raysched bench --mode ray``: the same workload through the real scheduler actor on Ray.

Time is compressed by ``--time-scale`` (0.1 runs ten times faster than real time): arrivals,
deadlines, CPU service and the simulated engines' steps all shrink by the same factor, and the
results are scaled back so they compare with the simulator's. CPU tasks sleep for their service
time (simulated CPU work); LLM tasks run on the simulated engine, which always generates its
whole token budget, so each task's budget is set to its true length.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from raysched.bench.report import (
    Record,
    mean_entry,
    print_table,
    records_from_results,
    summarize,
    write_report,
)
from raysched.bench.workloads import PoolSpec
from raysched.config import PoolConfig, SchedulerConfig
from raysched.core.types import CHARS_PER_TOKEN
from raysched.models import Task
from raysched.sim.workers import SimTask


def simulated_cpu_work(seconds: float) -> float:
    """Stand-in for a CPU model: holds the worker for ``seconds`` (simulated CPU work)."""
    time.sleep(seconds)
    return seconds


def to_task(st: SimTask, time_scale: float) -> Task:
    t = st.task
    sla_ms = max((t.deadline_s - st.arrival_s) * time_scale * 1e3, 1e-3)
    if t.pool.startswith("llm"):
        payload: dict[str, Any] = {"prompt": "x" * (t.num_prompt_tokens * CHARS_PER_TOKEN),
                                   "max_new_tokens": st.true_new_tokens}
    else:
        payload = {"fn": simulated_cpu_work, "args": (st.cpu_service_s * time_scale,)}
    return Task(id=t.task_id, kind=t.kind, priority=t.priority, sla_ms=sla_ms, payload=payload,
                requirements={"pool": t.pool})


def config_for(cluster: tuple[PoolSpec, ...], policy: str, time_scale: float, name: str,
               resources: dict[str, str] | None = None) -> SchedulerConfig:
    """Pools like the simulated cluster's. CPU workers take one task at a time, as simulated."""
    pools = []
    for p in cluster:
        extra = {"cluster_resource": resources[p.name]} if resources else {}
        if p.preset == "cpu":
            pools.append(PoolConfig(name=p.name, kind="cpu", replicas=p.count, slots=1,
                                    num_cpus=0.25, **extra))
        else:
            pools.append(PoolConfig(name=p.name, kind="llm", engine="sim", model=p.preset,
                                    replicas=p.count, max_batch_size=p.max_batch_size,
                                    num_cpus=0.1, time_scale=time_scale, **extra))
    return SchedulerConfig(name=name, pools=pools, policy=policy)


def replay(client: Any, tasks: list[SimTask], time_scale: float, progress: Any = None,
           bar: Any = None) -> tuple[list[Any], float]:
    """Submit ``tasks`` at their (scaled) arrival times; returns Results and the wall span."""
    handles = []
    start = time.monotonic()
    i = 0
    while i < len(tasks):
        now = time.monotonic() - start
        due = []
        while i < len(tasks) and tasks[i].arrival_s * time_scale <= now:
            due.append(to_task(tasks[i], time_scale))
            i += 1
        if due:
            handles.extend(client.submit_many(due))
        if progress is not None:
            progress.update(bar, completed=len(handles) - client.outstanding())
        time.sleep(0.002)
    results = []
    for h in handles:
        results.append(h.result(timeout=600))
        if progress is not None:
            progress.update(bar, completed=len(results))
    return results, time.monotonic() - start


def map_worker_ids(records: list[Record], cluster: tuple[PoolSpec, ...]) -> list[Record]:
    """Ray names workers ``pool-N`` with one counter for all pools; the simulator numbers each
    pool from 0. Renumber by order within the pool so the two can be compared."""
    ids = sorted({r.worker_id for r in records if r.worker_id},
                 key=lambda w: int(w.rsplit("-", 1)[1]))
    rename = {}
    for p in cluster:
        mine = [w for w in ids if w.rsplit("-", 1)[0] == p.name]
        rename.update({w: f"{p.name}-{i}" for i, w in enumerate(mine)})
    return [r._replace(worker_id=rename.get(r.worker_id, r.worker_id)) for r in records]


def main(args: argparse.Namespace, policies: list[str], seeds: list[int],
         cluster: tuple[PoolSpec, ...], meta: dict[str, Any]) -> int:
    import ray
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import raysched
    from raysched._ray import init_local
    from raysched.bench.runner import make_tasks

    if args.nodes:
        from raysched.bench.multinode import main as multinode_main

        return multinode_main(args, meta)
    scale = args.time_scale
    meta.update(time_scale=scale, note="ray mode: simulated engines and sleeping CPU tasks, "
                                       "times scaled back to real time")
    if "ray-serve" in args.peer and scale < 1:
        meta["peer_note"] = ("Ray Serve's router backs off and probes in real time, which does not "
                             "shrink with --time-scale: compare with the peer at time scale 1")
        print(f"note: {meta['peer_note']}")
    if not ray.is_initialized():
        if args.address:
            ray.init(address=args.address, namespace="raysched", log_to_driver=False)
        else:
            init_local(num_cpus=32)
    entries = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        runs = [(p, "policy") for p in policies]
        runs += [(peer, "peer") for peer in filter(None, args.peer.split(","))]
        for name, what in runs:
            per_seed = []
            for seed in seeds:
                tasks, wmeta = make_tasks(args, seed, args.load, cluster)
                meta.update(wmeta, tasks_per_run=len(tasks))
                bar = progress.add_task(f"{name} seed {seed} (ray)", total=len(tasks))
                if what == "peer":
                    from raysched.bench.serve_peer import run_serve

                    records, span = run_serve(tasks, cluster, scale, progress, bar)
                else:
                    config = config_for(cluster, name, scale, f"bench-{name}-{seed}")
                    client = raysched.connect(config=config)
                    results, span = replay(client, tasks, scale, progress, bar)
                    records = records_from_results(results, scale)
                    client.close()
                    ray.kill(client.actor)
                per_seed.append(summarize(name, records, span / scale, seed=seed))
            entries.append(mean_entry(per_seed))
    print_table(entries, f"raysched bench (ray, time scale {scale}): {meta['workload']}, "
                         f"load {args.load}")
    written = write_report(Path(args.out), entries, meta)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
