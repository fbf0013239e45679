"""``raysched bench --mode sim``: every policy on one workload in the discrete-event simulator.

Each policy that refuses work (admission, expiry) also gets its false-rejection rate: the share
of the tasks it rejected or expired that a replay running them instead completed in time
(``false_rejections``); this doubles the simulated time for those policies.
"""

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
from raysched.bench.workloads import PoolSpec, arrival_window_s, build_workload
from raysched.core.policies import POLICIES, build_core
from raysched.core.types import Priority, Status
from raysched.sim import Oracle, SimTask, Simulator
from raysched.sim.cost import SchedulerCost


def run_sim(policy: str, tasks: list[SimTask], cluster: tuple[PoolSpec, ...], seed: int = 0,
            on_progress: Callable[[int], None] | None = None, admission: bool | None = None,
            cost: SchedulerCost | None = None, spared: frozenset[str] = frozenset()
            ) -> tuple[dict[str, Any], list[Record]]:
    """One policy over ``tasks`` on a simulated ``cluster``; returns its entry and records.

    ``admission`` overrides the policy's admission and expiry (None: the policy's own);
    ``spared``: task ids the core never refuses for their deadline (``SchedulerCore.spared``).
    ``cost``: what the scheduler is charged per task (None: nothing); the entry's
    ``scheduler_busy`` is then the share of the run's span it was busy.
    """
    p = POLICIES[policy]
    oracle = Oracle() if p.needs_oracle else None
    core = build_core(policy, seed=seed, oracle=oracle, admission=admission)
    core.spared = spared
    workers = {wid: (pool.name, w) for pool in cluster for wid, w in pool.build(p.replica_order)}
    sim = Simulator(core, workers, cost=cost)
    if oracle is not None:
        oracle.bind(sim)
    started = time.perf_counter()
    run = sim.run(tasks, on_progress)
    records = records_from_outcomes(run.outcomes)
    span_s = run.end_s - (tasks[0].arrival_s if tasks else 0.0)
    entry = summarize(policy, records, span_s, run.busy_s, submitted=len(tasks), seed=seed,
                      window_s=arrival_window_s([t.arrival_s for t in tasks]),
                      wall_s=time.perf_counter() - started)
    if cost is not None and cost.per_task_s > 0:
        entry["scheduler_busy"] = run.scheduler_busy_s / span_s if span_s > 0 else 0.0
    return entry, records


REFUSED = (Status.REJECTED.value, Status.EXPIRED.value)


def false_rejections(policy: str, tasks: list[SimTask], cluster: tuple[PoolSpec, ...],
                     records: list[Record], seed: int = 0,
                     on_progress: Callable[[int], None] | None = None,
                     cost: SchedulerCost | None = None) -> dict[str, Any] | None:
    """How many of the tasks ``policy`` refused (rejected or expired) would have met their
    deadline had they been run: a counterfactual replay of the same ``tasks`` with the same
    policy and seed in which the refused tasks are spared (``SchedulerCore.spared``: never
    refused for their deadline; queued, planned and ordered by the policy as any task, one past
    its latest start first in its class), counting the spared tasks it completed within their
    deadline. The other tasks are left to the policy, which in the replay may refuse or delay
    ones it did not before: ``displaced`` counts the tasks that met their deadline in the run
    and not in the replay, what running the refused ones would have cost. None for a policy
    that never refuses.

    Returns ``{"refused", "would_meet", "submitted", "rate", "rate_per_task", "displaced",
    "per_priority": {class: {"refused", "would_meet"}}, "per_status": {"rejected" | "expired":
    {"refused", "would_meet"}}}``. Two rates, as they answer two questions: ``rate`` is the
    share of the refusals that were false (how often a refusal is wrong; under overload the
    refused tasks are the ones nearest the line, so it is high for any policy that refuses),
    ``rate_per_task`` the share of the tasks submitted that were refused falsely (how many
    tasks a user loses to wrong refusals, as the deadline-miss rate counts misses per task).
    Both are 0 when nothing was refused (and no replay is run). Tasks
    refused for capacity (a full queue, a tenant's cap, no worker that can hold them) are not
    spared: they count as refused, and the replay may refuse them again. A replay with
    admission and expiry off for every task answers another question, what the policy would do
    without them: under overload every class then collapses and the tasks that happen to be
    served early count as "would meet".
    """
    if not POLICIES[policy].admission:
        return None
    refused = {r.task_id: (Priority(r.priority).name, r.status) for r in records
               if r.status in REFUSED}
    per_priority = {p.name: {"refused": 0, "would_meet": 0} for p in Priority}
    per_status = {s: {"refused": 0, "would_meet": 0} for s in REFUSED}
    for name, status in refused.values():
        per_priority[name]["refused"] += 1
        per_status[status]["refused"] += 1
    displaced = 0
    if refused:
        _, replay = run_sim(policy, tasks, cluster, seed, on_progress, cost=cost,
                            spared=frozenset(refused))
        met = {r.task_id for r in records if r.deadline_met}
        for r in replay:
            was = refused.get(r.task_id)
            if was is not None and r.status == Status.COMPLETED.value and r.deadline_met:
                per_priority[was[0]]["would_meet"] += 1
                per_status[was[1]]["would_meet"] += 1
            displaced += r.task_id in met and not r.deadline_met
    would_meet = sum(c["would_meet"] for c in per_priority.values())
    return {"refused": len(refused), "would_meet": would_meet, "submitted": len(tasks),
            "rate": would_meet / len(refused) if refused else 0.0,
            "rate_per_task": would_meet / len(tasks) if tasks else 0.0, "displaced": displaced,
            "per_priority": per_priority, "per_status": per_status}


def main(args: argparse.Namespace, policies: list[str], seeds: list[int],
         cluster: tuple[PoolSpec, ...], meta: dict[str, Any]) -> int:
    """Each policy on each seed (and on the ``--sweep`` loads); prints a table, writes a report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    def workload(seed: int, load: float) -> tuple[list[SimTask], dict[str, Any]]:
        return build_workload(args.workload, args.tasks, seed, load, args.cv, cluster)

    loads = [float(x) for x in args.sweep.split(",")] if args.sweep else []
    cost = SchedulerCost.parse(getattr(args, "scheduler_cost", "none"),
                               getattr(args, "shards", 1))
    charged = cost.per_task_s > 0
    if charged:
        meta["scheduler_cost"] = {"source": cost.source, "shards": cost.shards,
                                  "per_task_us": cost.per_task_s * 1e6,
                                  "ceiling_tasks_per_s": cost.ceiling_tasks_per_s}
    busy: dict[str, list[float]] = {}
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
                                         lambda n, bar=bar: progress.advance(bar, n), cost=cost)
                busy.setdefault(policy, []).append(entry.get("scheduler_busy", 0.0))
                if POLICIES[policy].admission:
                    bar = progress.add_task(f"{policy} seed {seed}, refused ones run",
                                            total=len(tasks))
                entry["false_rejection"] = false_rejections(
                    policy, tasks, cluster, records, seed,
                    lambda n, bar=bar: progress.advance(bar, n), cost=cost)
                per_seed.append(entry)
                if seed == seeds[0]:
                    cdfs[policy] = latencies_ms(records)
            entries.append(mean_entry(per_seed))
            for load in loads:
                tasks, _ = workload(seeds[0], load)
                bar = progress.add_task(f"{policy} load {load}", total=len(tasks))
                e, _ = run_sim(policy, tasks, cluster, seeds[0],
                               lambda n, bar=bar: progress.advance(bar, n), cost=cost)
                sweep[policy][load] = {k: v["deadline_met"] for k, v in e["per_priority"].items()}
    print_table(entries, f"raysched bench (sim): {meta['workload']}, load {args.load}, "
                         f"seeds {seeds}")
    if charged:
        print(f"scheduler charged ({cost.source}, {cost.shards} shard(s)): "
              f"{cost.per_task_s * 1e6:.0f} µs a task, at most "
              f"{cost.ceiling_tasks_per_s:,.0f} tasks/s; busy: "
              + ", ".join(f"{p} {100 * sum(b) / len(b):.1f}%" for p, b in busy.items()))
    written = write_report(Path(args.out), entries, meta, sweep if loads else None, cdfs)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
