"""Chaos: thousands of mixed tasks while workers die, a node goes away and the scheduler restarts.

    python benchmarks/chaos.py [--tasks N] [--json PATH]

An in-machine ``ray.cluster_utils.Cluster`` of a head and three worker nodes (all 127.0.0.1);
every worker node carries CPU and 7B capacity, more than the pools need, so replacements have
somewhere to go. Tasks (CRITICAL fraud scoring, HIGH 7B summaries on the simulated engine at 10x
speed, LOW CPU callables) arrive steadily while the run kills a random worker every few seconds,
removes one node, restarts the scheduler actor once, and cancels a few tasks. Then it counts:
every submitted task must come back exactly once as completed, failed, rejected, expired or
cancelled; ``lost`` (no result) and ``duplicated`` (a second result for a task) must be zero.
Prints a table and writes the JSON (keys: submitted, completed, failed, rejected, expired,
cancelled, lost, duplicated, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

BIN_S = 0.5


def low_work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def make_tasks(n: int, seed: int) -> list[Any]:
    from raysched import Task

    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        r = rng.random()
        if r < 0.6:
            tasks.append(Task(id=f"c{i}", kind="classification", priority="CRITICAL", sla_ms=250,
                              payload={"features": [rng.gauss(0, 1) for _ in range(8)]}))
        elif r < 0.85:
            tasks.append(Task(id=f"s{i}", kind="summarization", priority="HIGH", sla_ms=3_000,
                              payload={"prompt": "x" * rng.randint(400, 2000),
                                       "max_new_tokens": rng.randint(16, 64)}))
        else:
            tasks.append(Task(id=f"l{i}", kind="batch", priority="LOW", sla_ms=60_000,
                              payload={"fn": low_work, "args": (rng.uniform(0.001, 0.01),)}))
    return tasks


def recovery_s(bins: list[int], fault_s: float, start_s: float) -> float | None:
    """Seconds after ``fault_s`` until completions per bin are back to 80% of the median rate of
    the five seconds before it."""
    i0 = int((fault_s - start_s) / BIN_S)
    before = sorted(bins[max(0, i0 - int(5 / BIN_S)):i0])
    if not before:
        return None
    target = 0.8 * before[len(before) // 2]
    for i in range(i0, len(bins)):
        if bins[i] >= target:
            return (i - i0) * BIN_S
    return None


def run(n_tasks: int, seed: int = 0, rate_per_s: float = 250.0) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    import raysched
    from raysched import PoolConfig, SchedulerConfig, Status

    rng = random.Random(seed)
    mb = 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 * mb, "node_ip_address": "127.0.0.1"})
    nodes = [cluster.add_node(num_cpus=2, resources={"cpu_pool": 3, "llm_7b": 1},
                              object_store_memory=80 * mb, node_ip_address="127.0.0.1")
             for _ in range(3)]
    cluster.wait_for_nodes()
    try:
        config = SchedulerConfig(name="chaos", hang_grace_s=10.0, pools=[
            PoolConfig(name="cpu", kind="cpu", replicas=4, num_cpus=0.25,
                       cluster_resource="cpu_pool"),
            PoolConfig(name="llm-7b", kind="llm", model="7b", replicas=2, max_batch_size=16,
                       num_cpus=0.25, cluster_resource="llm_7b", time_scale=0.1),
        ])
        client = raysched.connect(address=cluster.address, config=config)
        tasks = make_tasks(n_tasks, seed)
        by_id = {t.id: t for t in tasks}
        faults: list[tuple[float, str]] = []
        handles = []
        start = time.monotonic()
        next_kill = start + 3.0
        node_removed = restarted = False
        i = 0
        while i < len(tasks):
            now = time.monotonic()
            due = int((now - start) * rate_per_s) - i
            if due > 0:
                handles.extend(client.submit_many(tasks[i:i + due]))
                i += due
            if rng.random() < 0.02 and handles:  # the newest task: most likely still queued
                client.cancel([handles[-1].task_id])
            if now >= next_kill:
                workers = list(client.stats()["workers"])
                if workers:
                    victim = rng.choice(workers)
                    if ray.get(client.actor.kill_worker.remote(victim)):
                        faults.append((now, f"killed worker {victim}"))
                next_kill = now + rng.uniform(2.0, 4.0)
            elapsed = now - start
            if not node_removed and elapsed > 0.4 * len(tasks) / rate_per_s:
                cluster.remove_node(nodes[-1])
                faults.append((time.monotonic(), "removed a node"))
                node_removed = True
            if not restarted and elapsed > 0.7 * len(tasks) / rate_per_s:
                ray.kill(client.actor, no_restart=False)
                faults.append((time.monotonic(), "restarted the scheduler"))
                restarted = True
            time.sleep(0.01)
        results = {}
        received: Counter[str] = Counter()
        for h in handles:
            try:
                r = h.result(timeout=180)
            except raysched.TaskTimeoutError:
                continue
            received[r.task_id] += 1
            results[r.task_id] = (r, h.resolved_at)
        end = time.monotonic()
        counts = Counter(r.status.value for r, _ in results.values())
        failed_reasons = Counter(r.reason.split(" (")[0][:80] for r, _ in results.values()
                                 if r.status is Status.FAILED)
        crit = [r for r, _ in results.values() if by_id[r.task_id].priority.name == "CRITICAL"]
        bins = [0] * (int((end - start) / BIN_S) + 1)
        for r, t_done in results.values():
            if r.status is Status.COMPLETED:
                bins[min(len(bins) - 1, int((t_done - start) / BIN_S))] += 1
        out = {
            "submitted": len(tasks),
            **{s.value: counts.get(s.value, 0) for s in Status},
            "lost": len(tasks) - len(results),
            # A second Result reaching the driver for one task. Results the scheduler sent again
            # after its restart and the client dropped as already received are counted apart.
            "duplicated": sum(c - 1 for c in received.values()),
            "redelivered_and_dropped": client.duplicates_dropped,
            "failed_reasons": dict(failed_reasons),
            "critical_deadline_met": sum(r.deadline_met for r in crit) / max(1, len(crit)),
            "faults": [{"at_s": round(t - start, 2), "what": what,
                        "recovery_s": recovery_s(bins, t, start)} for t, what in faults],
            "retried": sum(1 for r, _ in results.values() if r.attempts > 1),
            "duration_s": end - start,
            "scheduler_notes": client.stats()["notes"],
        }
        client.close()
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=250.0, help="submissions per second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="out/chaos.json")
    args = ap.parse_args(argv)
    out = run(args.tasks, args.seed, args.rate)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"chaos: {out['submitted']} tasks, 3 worker nodes, {len(out['faults'])} faults")
    keys = ("submitted", "completed", "failed", "rejected", "expired", "cancelled", "lost",
            "duplicated")
    for k in keys:
        t.add_column(k, justify="right")
    t.add_row(*[str(out[k]) for k in keys])
    console = Console(width=160)
    console.print(t)
    f = Table(title=f"faults (CRITICAL deadline met during the run: "
                    f"{100 * out['critical_deadline_met']:.2f}%)")
    for col in ("at s", "fault", "throughput back in s"):
        f.add_column(col, justify="right")
    for fault in out["faults"]:
        rec = fault["recovery_s"]
        f.add_row(f"{fault['at_s']:.1f}", fault["what"], "-" if rec is None else f"{rec:.1f}")
    console.print(f)
    console.print(f"failed reasons: {out['failed_reasons']}; retried tasks: {out['retried']}")
    total = sum(out[k] for k in ("completed", "failed", "rejected", "expired", "cancelled"))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}; accounted {total} of {out['submitted']}")
    return 0 if out["lost"] == 0 and out["duplicated"] == 0 and total == out["submitted"] else 1


if __name__ == "__main__":
    sys.exit(main())
