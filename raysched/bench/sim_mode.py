"""``raysched bench --mode sim``: every policy on one workload in the discrete-event simulator."""

from __future__ import annotations

import argparse
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
from raysched.bench.workloads import PoolSpec, build_workload
from raysched.core.policies import POLICIES, build_core
from raysched.sim import Oracle, SimTask, Simulator


def run_sim(policy: str, tasks: list[SimTask], cluster: tuple[PoolSpec, ...], seed: int = 0,
            on_progress: Callable[[int], None] | None = None
            ) -> tuple[dict[str, Any], list[Record]]:
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
    entry = summarize(policy, records, span_s, run.busy_s, submitted=len(tasks), seed=seed,
                      wall_s=time.perf_counter() - started)
    return entry, records


def main(args: argparse.Namespace, policies: list[str], seeds: list[int],
         cluster: tuple[PoolSpec, ...], meta: dict[str, Any]) -> int:
    """Each policy on each seed (and on the ``--sweep`` loads); prints a table, writes a report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    def workload(seed: int, load: float) -> tuple[list[SimTask], dict[str, Any]]:
        return build_workload(args.workload, args.tasks, seed, load, args.cv, cluster)

    loads = [float(x) for x in args.sweep.split(",")] if args.sweep else []
    entries: list[dict[str, Any]] = []
    cdfs: dict[str, dict[str, list[float]]] = {}
    sweep: dict[str, dict[float, dict[str, float | None]]] = {p: {} for p in policies}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        for policy in policies:
            per_seed = []
            for seed in seeds:
                tasks, wmeta = workload(seed, args.load)
                meta.update(wmeta, tasks_per_run=len(tasks))
                bar = progress.add_task(f"{policy} seed {seed}", total=len(tasks))
                entry, records = run_sim(policy, tasks, cluster, seed,
                                         lambda n, bar=bar: progress.advance(bar, n))
                per_seed.append(entry)
                if seed == seeds[0]:
                    cdfs[policy] = latencies_ms(records)
            entries.append(mean_entry(per_seed))
            for load in loads:
                tasks, _ = workload(seeds[0], load)
                bar = progress.add_task(f"{policy} load {load}", total=len(tasks))
                e, _ = run_sim(policy, tasks, cluster, seeds[0],
                               lambda n, bar=bar: progress.advance(bar, n))
                sweep[policy][load] = {k: v["deadline_met"] for k, v in e["per_priority"].items()}
    print_table(entries, f"raysched bench (sim): {meta['workload']}, load {args.load}, "
                         f"seeds {seeds}")
    written = write_report(Path(args.out), entries, meta, sweep if loads else None, cdfs)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
