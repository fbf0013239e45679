"""Does raysched lose to a baseline anywhere? Every policy on a wide set of simulated workloads.

    python benchmarks/robustness.py [--seeds 0,1,2] [--tasks 20000] [--json out/robustness.json]
                                    [--workloads mix:0.9:1,bursty:1:1,...]

The issue's targets name a few workloads; a policy tuned to those can lose elsewhere. This runs
the financial mix over loads and arrival burstiness (inter-arrival CV), the bursty long-prompt
workload over time compressions, and the shared conversation trace (when ``../shared/traces``
holds it) over loads, each with fifo, round_robin, least_loaded, pow2, pow2_priority, edf and
raysched, in the discrete-event simulator (SIMULATED engines; ``raysched bench --mode sim``
without its false-rejection replay). Per workload it prints raysched against the best baseline:
every class's deadline-met share (a loss is more than half a point under), goodput, and HIGH p99
against edf's (the mean of the seeds' p99s; beside it, on how many seeds raysched's is at or
under edf's, since a difference of a few percent is within one seed's spread), then writes
every policy's figures to the JSON with the machine's line.

A workload is ``NAME:LOAD:CV``: ``mix``, ``bursty`` (``LOAD`` is its speed-up over real time)
or a trace CSV's path; ``CV`` matters for ``mix`` only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from raysched.bench.report import machine, mean_entry
from raysched.bench.sim_mode import run_sim
from raysched.bench.workloads import DEFAULT_CLUSTER, build_workload
from raysched.core.types import Priority

POLICIES = ("fifo", "round_robin", "least_loaded", "pow2", "pow2_priority", "edf", "raysched")
TRACE = (Path(__file__).resolve().parents[2] / "shared" / "traces"
         / "AzureLLMInferenceTrace_conv.csv")
# Loads around saturation and arrivals from Poisson to very bursty: where placement, expiry
# and preemption each decide the outcome.
MIX = [f"mix:{load}:{cv}" for load, cv in ((0.7, 1), (0.9, 1), (1.1, 1), (0.9, 2), (0.6, 4),
                                            (0.9, 4), (1.2, 4), (0.9, 8))]
BURSTY = ["bursty:1:1", "bursty:2:1", "bursty:4:1"]
TRACE_LOADS = (0.5, 1.0, 1.3)
# A class's deadline-met share this far under the best baseline's is a loss (the issue's
# "within 0.5 point").
MET_TOLERANCE = 0.005

console = Console(width=None if sys.stdout.isatty() else 200)  # a piped table is not cut


def default_workloads() -> list[str]:
    trace = [f"{TRACE}:{load}:1" for load in TRACE_LOADS] if TRACE.exists() else []
    return MIX + BURSTY + trace


def verdict(entries: dict[str, dict[str, Any]]) -> list[str]:
    """What raysched loses on against the best baseline; empty when it loses on nothing."""
    ours = entries["raysched"]
    others = {p: e for p, e in entries.items() if p != "raysched"}
    losses = []
    for c in Priority:
        met = ours["per_priority"].get(c.name, {}).get("deadline_met")
        rivals = [(e["per_priority"][c.name]["deadline_met"], p) for p, e in others.items()
                  if e["per_priority"].get(c.name, {}).get("deadline_met") is not None]
        if met is None or not rivals:
            continue
        best, name = max(rivals)
        if met < best - MET_TOLERANCE:
            losses.append(f"{c.name} met {100 * met:.2f} < {name} {100 * best:.2f}%")
    best_goodput, name = max((e["goodput"], p) for p, e in others.items())
    if ours["goodput"] < best_goodput:
        losses.append(f"goodput {ours['goodput']:.3f} < {name} {best_goodput:.3f}")
    p99, edf_p99 = (entries[p]["per_priority"].get("HIGH", {}).get("p99_ms")
                    for p in ("raysched", "edf"))
    if p99 is not None and edf_p99 is not None and p99 > edf_p99:
        losses.append(f"HIGH p99 {p99:,.0f} > edf {edf_p99:,.0f} ms")
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks per run")
    parser.add_argument("--workloads", default="", help="comma-separated NAME:LOAD:CV")
    parser.add_argument("--json", default="out/robustness.json")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    workloads = args.workloads.split(",") if args.workloads else default_workloads()
    report: dict[str, Any] = {"machine": machine(), "seeds": seeds, "tasks": args.tasks,
                              "simulated": True, "workloads": {}}
    console.rule("raysched robustness: every policy on every workload (SIMULATED engines)")
    console.print(f"Machine: {report['machine']}")
    started = time.perf_counter()
    rows = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("runs", total=len(workloads) * len(POLICIES) * len(seeds))
        for spec in workloads:
            name, load, cv = spec.rsplit(":", 2)
            entries = {}
            high_p99: dict[str, list[float | None]] = {}
            for policy in POLICIES:
                per_seed = []
                for seed in seeds:
                    tasks, _ = build_workload(name, args.tasks, seed, float(load), float(cv),
                                              DEFAULT_CLUSTER)
                    per_seed.append(run_sim(policy, tasks, DEFAULT_CLUSTER, seed=seed)[0])
                    progress.advance(bar)
                entries[policy] = mean_entry(per_seed)
                high_p99[policy] = [e["per_priority"].get("HIGH", {}).get("p99_ms")
                                    for e in per_seed]
            losses = verdict(entries)
            paired = [(a, b) for a, b in zip(high_p99["raysched"], high_p99["edf"], strict=True)
                      if a is not None and b is not None]
            label = f"{Path(name).name if name not in ('mix', 'bursty') else name} load {load}"
            label += f" CV {cv}" if name == "mix" else ""
            seeds_won = (sum(a <= b for a, b in paired), len(paired))
            report["workloads"][spec] = {"label": label, "losses": losses, "policies": {
                p: {"goodput": e["goodput"], "per_priority": e["per_priority"],
                    "high_p99_ms_per_seed": high_p99[p]}
                for p, e in entries.items()}, "high_p99_seeds_at_or_under_edf": seeds_won}
            rows.append((label, entries, losses, seeds_won))

    table = Table(title=f"raysched against the best baseline, mean of seeds {args.seeds} "
                        f"(SIMULATED)")
    for col in ("workload", "goodput (best baseline)", "HIGH p99 ms (edf)",
                "seeds HIGH p99 <= edf", "verdict"):
        table.add_column(col)
    for label, entries, losses, (won, paired_seeds) in rows:
        others = {p: e for p, e in entries.items() if p != "raysched"}
        best, best_name = max((e["goodput"], p) for p, e in others.items())
        p99 = entries["raysched"]["per_priority"].get("HIGH", {}).get("p99_ms")
        edf_p99 = entries["edf"]["per_priority"].get("HIGH", {}).get("p99_ms")
        table.add_row(label, f"{entries['raysched']['goodput']:.3f} ({best_name} {best:.3f})",
                      "-" if p99 is None else f"{p99:,.0f} ({edf_p99:,.0f})",
                      f"{won} of {paired_seeds}" if paired_seeds else "-",
                      "[green]no loss[/]" if not losses else "[red]" + "; ".join(losses) + "[/]")
    console.print(table)
    lost = sum(1 for _, _, losses, _ in rows if losses)
    console.print(f"raysched loses somewhere on {lost} of {len(rows)} workloads; "
                  f"{time.perf_counter() - started:.0f} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    console.print(f"JSON written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
