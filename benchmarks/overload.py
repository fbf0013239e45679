"""Overload: two CPU workers offered 1.5x what they can do, every task with a 1 s deadline.

    python benchmarks/overload.py [--seconds 8] [--factor 1.5] [--json out/overload.json]

An embedded Ray on 127.0.0.1 with one pool of two CPU actors; tasks of 100 ms (a sleeping
callable) arrive at ``factor`` x capacity (capacity: 2 workers / 0.1 s = 20 tasks/s) for
``seconds``, each with ``sla_ms=1000``. A scheduler that keeps deadlines completes what it can
on time and refuses or expires the rest with the reason; it never runs a task that then
finishes late. Prints a table with the machine and writes the JSON (keys: submitted,
on_time, late, max_late_ms, rejected, expired, failed, lost, reasons).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SERVICE_S = 0.1
WORKERS = 2


def work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def run(seconds: float, factor: float) -> dict[str, Any]:
    import raysched
    from raysched import PoolConfig, SchedulerConfig, Status, Task

    client = raysched.connect(config=SchedulerConfig(pools=[
        PoolConfig(name="cpu", kind="cpu", replicas=WORKERS, num_cpus=0.5)]), num_cpus=2)
    rate_per_s = factor * WORKERS / SERVICE_S
    n = int(rate_per_s * seconds)
    handles = []
    start = time.monotonic()
    for i in range(n):
        wait_s = start + i / rate_per_s - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)
        handles.append(client.submit(Task(id=f"o{i}", kind="job", priority="HIGH", sla_ms=1000,
                                          payload={"fn": work, "args": (SERVICE_S,)})))
    results = []
    for h in handles:
        with contextlib.suppress(raysched.TaskTimeoutError):
            results.append(h.result(timeout=60))
    client.close()
    done = [r for r in results if r.status is Status.COMPLETED]
    late_ms = [1e3 * r.total_s - 1000.0 for r in done if not r.deadline_met]
    reasons = Counter(r.reason.split(":")[0][:60] for r in results
                      if r.status is not Status.COMPLETED)
    counts = Counter(r.status.value for r in results)
    return {"submitted": n, "offered_per_s": rate_per_s, "capacity_per_s": WORKERS / SERVICE_S,
            "on_time": sum(r.deadline_met for r in done), "late": len(late_ms),
            "max_late_ms": max(late_ms, default=0.0),
            "on_time_share_of_completions": (sum(r.deadline_met for r in done)
                                             / max(1, len(done))),
            "rejected": counts.get("rejected", 0), "expired": counts.get("expired", 0),
            "failed": counts.get("failed", 0), "lost": n - len(results),
            "reasons": dict(reasons)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--factor", type=float, default=1.5, help="offered load / capacity")
    ap.add_argument("--json", default="out/overload.json")
    args = ap.parse_args(argv)
    out = run(args.seconds, args.factor)
    out["machine"] = {"platform": platform.platform(), "cores": os.cpu_count(),
                      "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"overload: 2 CPU workers, {out['offered_per_s']:.0f} tasks/s offered "
                    f"({args.factor:g}x capacity) for {args.seconds:g} s, 1 s deadlines")
    keys = ("submitted", "on_time", "late", "max_late_ms", "rejected", "expired", "failed",
            "lost")
    for k in keys:
        t.add_column(k, justify="right")
    t.add_row(*[f"{out[k]:.1f}" if isinstance(out[k], float) else str(out[k]) for k in keys])
    console = Console(width=140)
    console.print(t)
    console.print(f"on time: {100 * out['on_time_share_of_completions']:.1f}% of completions; "
                  f"refusals by reason: {out['reasons']}")
    console.print(f"machine: {out['machine']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0 if out["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
