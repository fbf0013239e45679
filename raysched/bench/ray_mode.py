"""``raysched bench --mode ray``: the same workload through the real scheduler actor on Ray.

Time is compressed by ``--time-scale`` (0.1 runs ten times faster than real time): arrivals,
deadlines, CPU service and the simulated engines' steps all shrink by the same factor, and the
results are scaled back so they compare with the simulator's. The tasks are the simulated
workload's, replayed as user Tasks (``replay.plan_of``: sleeping CPU tasks, simulated-engine LLM
tasks whose token budget is their true length).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from raysched.bench.replay import CPU_WORKER_CPUS, LLM_WORKER_CPUS, plan_of, replay
from raysched.bench.report import (
    Record,
    mean_entry,
    print_table,
    records_from_results,
    summarize,
    write_report,
)
from raysched.bench.workloads import PoolSpec, arrival_window_s, build_workload
from raysched.config import PoolConfig, SchedulerConfig

# How long a run waits for its Results after the last submission (real seconds): beyond the
# longest deadline of the financial mix at time scale 1, and of any trace row.
RESULT_WAIT_S = 600.0


def config_for(cluster: tuple[PoolSpec, ...], policy: str, time_scale: float, name: str,
               resources: dict[str, str] | None = None) -> SchedulerConfig:
    """Pools like the simulated cluster's. CPU workers take one task at a time, as simulated."""
    pools = []
    for p in cluster:
        extra = {"cluster_resource": resources[p.name]} if resources else {}
        if p.preset == "cpu":
            pools.append(PoolConfig(name=p.name, kind="cpu", replicas=p.count, slots=1,
                                    num_cpus=CPU_WORKER_CPUS, **extra))
        else:
            pools.append(PoolConfig(name=p.name, kind="llm", engine="sim", model=p.preset,
                                    replicas=p.count, max_batch_size=p.max_batch_size,
                                    num_cpus=LLM_WORKER_CPUS, time_scale=time_scale, **extra))
    return SchedulerConfig(name=name, pools=pools, policy=policy)


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
    """Each policy (and ``--peer``) on each seed through Ray; prints a table, writes a report.

    Returns 1 when any run lost tasks (submitted, no Result within ``RESULT_WAIT_S``).
    """
    import ray
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import raysched
    from raysched._ray import init_local

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
    lost = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        runs = [(p, "policy") for p in policies]
        runs += [(peer, "peer") for peer in filter(None, args.peer.split(","))]
        for name, what in runs:
            per_seed = []
            for seed in seeds:
                tasks, wmeta = build_workload(args.workload, args.tasks, seed, args.load,
                                              args.cv, cluster)
                meta.update(wmeta, tasks_per_run=len(tasks))
                bar = progress.add_task(f"{name} seed {seed} (ray)", total=len(tasks))
                if what == "peer":
                    from raysched.bench.serve_peer import run_serve

                    records, span = run_serve(tasks, cluster, scale, progress, bar)
                    submitted = len(tasks)
                else:
                    config = config_for(cluster, name, scale, f"bench-{name}-{seed}")
                    client = raysched.connect(config=config)
                    run = replay(client, plan_of(tasks, scale), RESULT_WAIT_S,
                                 lambda _sent, done, bar=bar: progress.update(bar, completed=done))
                    client.close()
                    ray.kill(client.actor)
                    records, span, submitted = (records_from_results(run.results, scale),
                                                run.span_s, run.submitted)
                    if run.lost:
                        progress.console.print(f"{name} seed {seed}: {run.lost} of {submitted} "
                                               f"tasks had no Result after {RESULT_WAIT_S:g} s")
                        lost += run.lost
                per_seed.append(summarize(name, records, span / scale, submitted=submitted,
                                          seed=seed,
                                          window_s=arrival_window_s([t.arrival_s for t in tasks])))
            entries.append(mean_entry(per_seed))
    print_table(entries, f"raysched bench (ray, time scale {scale}): {meta['workload']}, "
                         f"load {args.load}")
    written = write_report(Path(args.out), entries, meta)
    print("wrote " + ", ".join(str(p) for p in written))
    return 1 if lost else 0
