"""Tasks per second against the number of scheduler shards, on one in-machine Ray.

Run from the repository root::

    python benchmarks/shards.py [--shards 1,2,4] [--tasks N] [--workers W] [--drivers D]
                                [--json PATH] [--quick]

For each shard count, a fresh embedded Ray (in a process of its own, on 127.0.0.1) runs a
scheduler with ``shards=S`` over one CPU pool of ``W`` actors (the same workers whatever S is:
each shard runs W / S of them), and ``D`` driver processes each send ``N / D`` no-op tasks
through ``client.map``; the rate is all tasks over the wall time from the first submit to the
last Result. A no-op costs the workers almost nothing, so what limits the rate is the
scheduler's event loop (each shard has its own) and, once the shards are enough, the machine's
cores (drivers, schedulers and workers share them): the table says how many there are.
Prints a table, writes JSON and ``shards.png`` next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# One run: starts the scheduler in this process's embedded Ray, then D driver processes that
# connect to it by address and map their share of the tasks; prints one JSON line.
_RUN = r"""
import json, os, subprocess, sys, time
import ray, raysched
from raysched import PoolConfig, SchedulerConfig

shards, workers, tasks, drivers = (int(a) for a in sys.argv[1:5])
config = SchedulerConfig(name="bench-shards", shards=shards, pools=[
    PoolConfig(name="cpu", kind="cpu", replicas=workers, num_cpus=0.25)])
client = raysched.connect(config=config, num_cpus=max(4, workers))
address = ray.get_runtime_context().gcs_address
per = tasks // drivers
procs = [subprocess.Popen([sys.executable, "-c", DRIVER, address, str(per)],
                          stdout=subprocess.PIPE, text=True) for _ in range(drivers)]
outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
start = min(o["start"] for o in outs)
end = max(o["end"] for o in outs)
done = sum(o["completed"] for o in outs)
print(json.dumps({"shards": shards, "tasks": per * drivers, "completed": done,
                  "wall_s": end - start, "per_s": per * drivers / (end - start)}))
client.close()
"""

_DRIVER = r"""
import json, sys, time
import raysched
from raysched import Task

def _noop():
    return None

client = raysched.connect(address=sys.argv[1], config={"name": "bench-shards", "pools": [
    {"name": "cpu", "kind": "cpu"}]})
n = int(sys.argv[2])
warm = [Task(kind="noop", sla_ms=600_000, payload={"fn": _noop}) for _ in range(200)]
list(client.map(warm, timeout=120))
tasks = [Task(kind="noop", sla_ms=600_000, payload={"fn": _noop}) for _ in range(n)]
start = time.time()
done = sum(1 for r in client.map(tasks, timeout=600) if r.ok)
end = time.time()
print(json.dumps({"start": start, "end": end, "completed": done}))
client.close()
"""


def run_one(shards: int, workers: int, tasks: int, drivers: int) -> dict[str, Any]:
    """One shard count in a fresh Ray of its own (its own temp dir, so nothing is shared)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": tempfile.mkdtemp(prefix="rs-sh-"),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    code = f"DRIVER = {_DRIVER!r}\n{_RUN}"
    out = subprocess.run([sys.executable, "-c", code, str(shards), str(workers), str(tasks),
                          str(drivers)], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"shards={shards} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", default="1,2,4", help="shard counts to run, in order")
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per run")
    parser.add_argument("--workers", type=int, default=4, help="CPU worker actors in all")
    parser.add_argument("--drivers", type=int, default=2, help="driver processes")
    parser.add_argument("--json", default="out/shards.json")
    parser.add_argument("--quick", action="store_true", help="3,000 tasks per run")
    args = parser.parse_args(argv)
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from raysched.bench.report import machine

    tasks = 3_000 if args.quick else args.tasks
    counts = [int(s) for s in args.shards.split(",")]
    started = time.time()
    rows = [run_one(s, args.workers, tasks, args.drivers)
            for s in track(counts, description="shard counts")]
    info = machine()
    table = Table(title=f"Tasks/s against scheduler shards ({args.workers} CPU workers in all, "
                        f"{args.drivers} drivers, {tasks:,} no-op tasks a run; "
                        f"{info['cores']} cores, {info['cpu']})")
    for col in ("shards", "tasks", "completed", "wall s", "tasks/s", "vs 1 shard"):
        table.add_column(col, justify="right")
    base = rows[0]["per_s"]
    for r in rows:
        table.add_row(str(r["shards"]), f"{r['tasks']:,}", f"{r['completed']:,}",
                      f"{r['wall_s']:.2f}", f"{r['per_s']:,.0f}", f"{r['per_s'] / base:.2f}x")
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "workers": args.workers, "drivers": args.drivers,
                               "tasks_per_run": tasks, "runs": rows,
                               "wall_s": time.time() - started}, indent=2))
    written = [out]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'raysched[bench]'): no plot")
    else:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["shards"] for r in rows], [r["per_s"] for r in rows], marker="o")
        ax.set_xlabel("scheduler shards")
        ax.set_ylabel("tasks/s")
        ax.set_title(f"{info['cores']} cores, {args.workers} workers, {args.drivers} drivers")
        ax.set_ylim(bottom=0)
        fig.tight_layout()
        fig.savefig(out.with_name("shards.png"), dpi=110)
        written.append(out.with_name("shards.png"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
