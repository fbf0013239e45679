"""Where one scheduler saturates: the simulator's projection with the scheduler's own cost.

Run from the repository root::

    python benchmarks/ceiling.py [--scheduler-cost reference|PATH] [--shards 1,6]
                                 [--scales 1,10,100] [--json PATH]

The default cluster (4 CPU, 4 7B and 2 70B workers) is scaled to 10, 100 and 1,000 workers
with the financial mix at load 0.9 on every pool (most tasks are CPU classifications), and the
SIMULATED run charges the scheduler per task what ``benchmarks/overhead.py --parts cd``
measured (``--scheduler-cost out/overhead.json``; by default the reference figures of
``raysched.sim.cost``). Each shard count gets a table: offered tasks/s, how busy the scheduler
was while they arrived, CRITICAL's deadline-met share and p99, and the shards that would keep
it under 80% busy. Writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheduler-cost", default="reference",
                        help="'reference' or the JSON of benchmarks/overhead.py --parts cd")
    parser.add_argument("--shards", default="1,6", help="shard counts to project")
    parser.add_argument("--scales", default="1,10,100",
                        help="multiples of the default 10-worker cluster")
    parser.add_argument("--max-tasks", type=int, default=60_000, help="tasks per run at most")
    parser.add_argument("--json", default="out/ceiling.json")
    args = parser.parse_args(argv)
    from rich.console import Console

    from raysched.bench.multinode import project_sim, projection_table
    from raysched.bench.report import machine
    from raysched.sim.cost import SchedulerCost

    console = Console(width=None if sys.stdout.isatty() else 200)
    started = time.time()
    scales = [int(s) for s in args.scales.split(",")]
    runs = []
    for shards in (int(s) for s in args.shards.split(",")):
        cost = SchedulerCost.parse(args.scheduler_cost, shards)
        rows = project_sim(scales, cost, args.max_tasks)
        console.print(projection_table(rows, cost))
        runs.append({"shards": shards, "source": cost.source, "per_task_s": cost.per_task_s,
                     "ceiling_tasks_per_s": cost.ceiling_tasks_per_s, "rows": rows})
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "simulated": True, "runs": runs,
                               "wall_s": time.time() - started}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
