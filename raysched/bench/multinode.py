"""Multi-node throughput: no-op tasks through the scheduler as raylets are added.

On this machine the nodes are ``ray.cluster_utils.Cluster`` raylets (all on 127.0.0.1), so the
figure shows what adding raylets costs the scheduler, not more hardware; on a real cluster
(``--address``) it is the user's multi-node throughput. The CPU workers are spread evenly over the
nodes through a custom resource, and each result names the node its worker ran on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from raysched.sim.cost import SchedulerCost

TOTAL_WORKERS = 4
# A scheduler kept under this share busy still answers within a few of its own service times.
SHARD_BUSY_TARGET = 0.8


def noop() -> None:
    """The task that measures the scheduler alone: no work."""
    return None


def _throughput(client: Any, n: int) -> tuple[float, Counter[str]]:
    from raysched import Task

    tasks = [Task(kind="noop", sla_ms=600_000, payload={"fn": noop}) for _ in range(n)]
    start = time.perf_counter()
    results = list(client.map(tasks, timeout=600))
    elapsed = time.perf_counter() - start
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok][:3]
    return n / elapsed, Counter(r.worker_id for r in results)


def run_nodes(k: int, n_tasks: int) -> dict[str, Any]:
    """Throughput with ``k`` raylets, each carrying an equal share of the CPU workers."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray.cluster_utils import Cluster

    import raysched
    from raysched import PoolConfig, SchedulerConfig

    mb = 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 * mb, "node_ip_address": "127.0.0.1"})
    per_node = TOTAL_WORKERS // k
    for _ in range(k):
        cluster.add_node(num_cpus=per_node, resources={"cpu_pool": per_node},
                         object_store_memory=80 * mb, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    try:
        config = SchedulerConfig(name=f"multinode-{k}", pools=[
            PoolConfig(name="cpu", kind="cpu", replicas="auto", num_cpus=0.5,
                       cluster_resource="cpu_pool")])
        client = raysched.connect(address=cluster.address, config=config)
        nodes = {w: s["node_id"] for w, s in client.stats()["workers"].items()}
        _throughput(client, 500)  # warm-up
        rate, per_worker = _throughput(client, n_tasks)
        per_node: Counter[str] = Counter()
        for w, count in per_worker.items():
            per_node[nodes[w][:8]] += count
        ray.kill(client.actor)
        return {"nodes": k, "workers": len(nodes), "tasks": n_tasks, "tasks_per_s": rate,
                "per_node": dict(per_node)}
    finally:
        ray.shutdown()
        cluster.shutdown()


def project_sim(scales: list[int], cost: SchedulerCost, max_tasks: int = 60_000
                ) -> list[dict[str, Any]]:
    """The simulator's projection as the cluster grows (the default cluster times each of
    ``scales``; same mix and load per worker), the scheduler charged ``cost`` per task: per
    scale the offered tasks/s, how busy the scheduler was while they arrived, CRITICAL's
    deadline-met share and p99, and the shards that would keep it under ``SHARD_BUSY_TARGET``
    busy."""
    from raysched.bench.sim_mode import run_sim
    from raysched.bench.workloads import DEFAULT_CLUSTER, financial_mix, scale_cluster

    rows = []
    for s in scales:
        cluster = scale_cluster(DEFAULT_CLUSTER, s)
        workers = sum(p.count for p in cluster)
        tasks = financial_mix(min(max_tasks, workers * 1_000), load=0.9, seed=0,
                              cluster=cluster)
        window_s = max(tasks[-1].arrival_s - tasks[0].arrival_s, 1e-9)
        offered = len(tasks) / window_s
        entry, _ = run_sim("raysched", tasks, cluster, cost=cost)
        cpu_share = sum(1 for t in tasks if t.task.pool == "cpu") / len(tasks)
        busy_s = entry.get("scheduler_busy", 0.0) * entry["span_s"]
        rows.append({"workers": workers, "tasks": len(tasks), "offered_tasks_per_s": offered,
                     "cpu_share": cpu_share,
                     # Busy time over the arrival window: the drain of long LLM work after it
                     # costs the scheduler little and would dilute the figure.
                     "scheduler_busy": min(1.0, busy_s / window_s),
                     "critical_p99_ms": entry["per_priority"]["CRITICAL"]["p99_ms"],
                     "shards_needed": math.ceil(offered * cost.per_task_s * cost.shards
                                                / SHARD_BUSY_TARGET),
                     "goodput": entry["goodput"],
                     "critical_met": entry["per_priority"]["CRITICAL"]["deadline_met"],
                     "sim_wall_s": entry["wall_s"]})
    return rows


def projection_table(projection: list[dict[str, Any]], cost: SchedulerCost) -> Any:
    """``project_sim``'s rows as a rich table, titled with the cost it charged."""
    from rich.table import Table

    table = Table(title=f"SIMULATED projection (financial mix, load 0.9, raysched), the "
                        f"scheduler charged {cost.per_task_s * 1e6:.0f} µs a task "
                        f"({cost.source}; {cost.shards} shard(s): at most "
                        f"{cost.ceiling_tasks_per_s:,.0f} tasks/s)")
    for col in ("workers", "tasks", "CPU share", "offered tasks/s", "scheduler busy",
                "CRITICAL met", "CRITICAL p99 ms", "shards for <80% busy", "sim wall s"):
        table.add_column(col, justify="right")
    for r in projection:
        p99 = r["critical_p99_ms"]
        table.add_row(str(r["workers"]), f"{r['tasks']:,}", f"{100 * r['cpu_share']:.0f}%",
                      f"{r['offered_tasks_per_s']:,.0f}", f"{100 * r['scheduler_busy']:.0f}%",
                      f"{100 * r['critical_met']:.2f}%", "-" if p99 is None else f"{p99:,.0f}",
                      str(r["shards_needed"]), f"{r['sim_wall_s']:.1f}")
    return table


def main(args: argparse.Namespace, meta: dict[str, Any]) -> int:
    """Run each node count in its own process (one Ray connection per process)."""
    import subprocess
    import sys

    from rich.console import Console
    from rich.table import Table

    counts = [int(k) for k in args.nodes.split(",")]
    rows = []
    for k in counts:
        proc = subprocess.run([sys.executable, "-m", "raysched.bench.multinode", str(k),
                               str(args.tasks)], capture_output=True, text=True, timeout=900,
                              check=False)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stderr[-2000:])
            return 1
        rows.append(json.loads(line[-1][7:]))
    base = rows[0]["tasks_per_s"]
    table = Table(title=f"no-op tasks through the scheduler, {TOTAL_WORKERS} CPU workers spread "
                        f"over K raylets on one machine")
    for col in ("nodes", "tasks/s", f"vs {counts[0]} node(s)", "tasks per node"):
        table.add_column(col, justify="right")
    for r in rows:
        r["ratio"] = r["tasks_per_s"] / base
        table.add_row(str(r["nodes"]), f"{r['tasks_per_s']:,.0f}", f"{r['ratio']:.2f}x",
                      ", ".join(f"{v}" for v in r["per_node"].values()))
    console = Console(width=160)
    console.print(table)
    # The projection charges the scheduler its own work: measured here, or the reference figures.
    spec = args.scheduler_cost if args.scheduler_cost != "none" else "reference"
    cost = SchedulerCost.parse(spec, args.shards)
    projection = project_sim([1, 10, 100] if args.scale == 1 else [args.scale], cost)
    sim_table = projection_table(projection, cost)
    console.print(sim_table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "multinode.json").write_text(json.dumps({
        "meta": meta, "ray": rows, "sim_projection": projection,
        "scheduler_cost": {"source": cost.source, "shards": cost.shards,
                           "per_task_s": cost.per_task_s}}, indent=2))
    print(f"wrote {out / 'multinode.json'}")
    return 0


if __name__ == "__main__":
    import sys

    result = run_nodes(int(sys.argv[1]), int(sys.argv[2]))
    print("RESULT " + json.dumps(result))
