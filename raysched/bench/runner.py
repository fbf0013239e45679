"""``raysched bench``: run policies side by side on one workload, in simulation or on Ray."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raysched.bench.report import (
    Record,
    latencies_ms,
    mean_entry,
    print_table,
    records_from_outcomes,
    summarize,
    write_report,
)
from raysched.bench.workloads import (
    DEFAULT_CLUSTER,
    PoolSpec,
    financial_mix,
    load_trace,
    scale_cluster,
)
from raysched.core.policies import POLICIES, build_core
from raysched.sim import Oracle, SimTask, Simulator

SIM_POLICIES = ("fifo", "round_robin", "least_loaded", "pow2", "priority", "edf", "raysched",
                "clairvoyant")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine() -> dict[str, Any]:
    # Other work on the machine moves wall-clock (ray mode) figures: record how busy it was.
    return {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}


def run_sim(policy: str, tasks: list[SimTask], cluster: tuple[PoolSpec, ...], seed: int = 0,
            on_progress: Callable[[int], None] | None = None) -> tuple[dict[str, Any], list[Record]]:
    """One policy over ``tasks`` on a simulated ``cluster``; returns its entry and records."""
    oracle = Oracle() if POLICIES[policy].needs_oracle else None
    core = build_core(policy, seed=seed, oracle=oracle)
    workers = {wid: (p.name, w) for p in cluster for wid, w in p.build()}
    sim = Simulator(core, workers)
    if oracle is not None:
        oracle.bind(sim)
    started = time.perf_counter()
    run = sim.run(tasks, on_progress)
    records = records_from_outcomes(run.outcomes)
    span_s = run.end_s - (tasks[0].arrival_s if tasks else 0.0)
    entry = summarize(policy, records, span_s, run.busy_s, seed=seed,
                      wall_s=time.perf_counter() - started)
    return entry, records


def make_tasks(args: argparse.Namespace, seed: int, load: float,
               cluster: tuple[PoolSpec, ...]) -> tuple[list[SimTask], dict[str, Any]]:
    if args.workload == "mix":
        return financial_mix(args.tasks, load=load, seed=seed, cv=args.cv, cluster=cluster), {
            "workload": "financial mix", "arrivals": "poisson" if args.cv == 1 else
            f"gamma, CV {args.cv}"}
    tasks, compress = load_trace(args.workload, load=load, limit=args.tasks, cluster=cluster)
    return tasks, {"workload": f"trace {Path(args.workload).name}",
                   "time_compression": round(compress, 3)}


def main(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"unknown policies {unknown}; known: {sorted(POLICIES)}")
        return 2
    seeds = [int(s) for s in str(args.seeds).split(",")]
    cluster = scale_cluster(DEFAULT_CLUSTER, args.scale)
    out = Path(args.out)
    meta: dict[str, Any] = {"mode": args.mode, "load": args.load, "seeds": seeds,
                            "cluster": {p.name: f"{p.count} x {p.preset}" +
                                        (f" (batch {p.max_batch_size})" if p.preset != "cpu"
                                         else "") for p in cluster},
                            "machine": machine()}
    if args.mode != "sim":
        from raysched.bench.ray_mode import main as ray_main

        return ray_main(args, policies, seeds, cluster, meta)
    loads = [float(x) for x in args.sweep.split(",")] if args.sweep else []
    entries: list[dict[str, Any]] = []
    cdfs: dict[str, dict[str, list[float]]] = {}
    sweep: dict[str, dict[float, dict[str, float | None]]] = {p: {} for p in policies}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        for policy in policies:
            per_seed = []
            for seed in seeds:
                tasks, wmeta = make_tasks(args, seed, args.load, cluster)
                meta.update(wmeta, tasks_per_run=len(tasks))
                bar = progress.add_task(f"{policy} seed {seed}", total=len(tasks))
                entry, records = run_sim(policy, tasks, cluster, seed,
                                         lambda n, bar=bar: progress.advance(bar, n))
                per_seed.append(entry)
                if seed == seeds[0]:
                    cdfs[policy] = latencies_ms(records)
            entries.append(mean_entry(per_seed))
            for load in loads:
                tasks, _ = make_tasks(args, seeds[0], load, cluster)
                bar = progress.add_task(f"{policy} load {load}", total=len(tasks))
                e, _ = run_sim(policy, tasks, cluster, seeds[0],
                               lambda n, bar=bar: progress.advance(bar, n))
                sweep[policy][load] = {k: v["deadline_met"] for k, v in e["per_priority"].items()}
    print_table(entries, f"raysched bench (sim): {meta['workload']}, load {args.load}, "
                         f"seeds {seeds}")
    written = write_report(out, entries, meta, sweep if loads else None, cdfs)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="compare scheduling policies on one workload")
    b.add_argument("--mode", choices=["sim", "ray"], default="sim")
    b.add_argument("--policies", default=",".join(SIM_POLICIES))
    b.add_argument("--workload", default="mix", help="'mix' or the path of an Azure trace CSV")
    b.add_argument("--load", type=float, default=0.9, help="offered utilisation of every pool")
    b.add_argument("--tasks", type=int, default=20_000, help="tasks per run")
    b.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    b.add_argument("--cv", type=float, default=1.0, help="inter-arrival CV (1 = Poisson)")
    b.add_argument("--scale", type=int, default=1, help="multiply every pool's worker count")
    b.add_argument("--sweep", default="", help="loads for the deadline-met vs load plot")
    b.add_argument("--out", default="out/bench")
    b.add_argument("--time-scale", type=float, default=1.0,
                   help="ray mode: run this much faster than real time")
    b.add_argument("--peer", default="", help="ray mode: also run a peer, e.g. ray-serve")
    b.add_argument("--nodes", default="", help="ray mode: node counts to try, e.g. 1,2,4")
    b.add_argument("--address", default=None, help="ray mode: an existing cluster")
    b.set_defaults(func=main)
