"""Summaries of runs: one entry per policy (or per demo run), tables, a markdown report, plots.

Goodput is the number of tasks that completed within their deadline per second of the
workload's arrival window (first arrival to last arrival), the same window for every policy on
one workload: goodput then ranks policies by the deadlines they met. Per second of the run (to
the last result) it would also rank them by when the last long task happened to end: on the
financial mix at load 0.9, inter-arrival CV 2, edf and raysched met the same share of every
class and their goodputs differed by 0.4% that way. A run whose arrivals span no time (every
task at once) falls back to the run's span.

``deadline_met`` per class is over every task of the class, rejected and expired ones included.
``lost`` counts tasks that were submitted and never came back (the simulator ends every task,
so its runs have none; the demo and Ray runs count their handles).
False rejections (simulator only) are the rejected and expired tasks that a replay with
nothing refused completed within their deadline, given as a share of the tasks submitted and
as a share of the refusals (``sim_mode.false_rejections``).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from raysched.core.types import Outcome, Priority, Status


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
    """The machine line of a report."""
    # Other work on the machine moves wall-clock (ray mode) figures: record how busy it was.
    return {"platform": platform.platform(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}


class Record(NamedTuple):
    """One finished task, from the simulator or from Ray, in the simulator's time units."""

    task_id: str
    priority: int
    status: str
    deadline_met: bool
    total_ms: float
    worker_id: str
    end_s: float


def records_from_outcomes(outcomes: Sequence[Outcome]) -> list[Record]:
    """Records of the simulator's outcomes."""
    return [Record(o.task_id, int(o.priority), o.status.value, o.deadline_met,
                   (o.end_s - o.submit_s) * 1e3, o.worker_id, o.end_s) for o in outcomes]


def records_from_results(results: Sequence[Any], time_scale: float = 1.0) -> list[Record]:
    """Records of user ``Result``s, with times scaled back by ``time_scale``."""
    return [Record(r.task_id, int(r.priority), r.status.value, r.deadline_met,
                   r.total_s / time_scale * 1e3, r.worker_id, 0.0) for r in results]


def tally(records: Sequence[Record], submitted: int | None = None) -> dict[str, Any]:
    """Per class: count, completed, p50/p95/p99 of completed latencies, and the fraction of *all*
    its tasks (rejected and expired included) that met their deadline; totals per status.

    ``submitted`` is how many tasks were handed in (by default one per record, as in the
    simulator); ``lost`` is those without a record.
    """
    submitted = len(records) if submitted is None else submitted
    prio = np.array([r.priority for r in records], dtype=np.int8)
    status = np.array([r.status for r in records])
    met = np.array([r.deadline_met for r in records], dtype=bool)
    total_ms = np.array([r.total_ms for r in records])
    done = status == Status.COMPLETED.value
    per_priority = {}
    for p in Priority:
        mine = prio == int(p)
        lat = total_ms[mine & done]
        per_priority[p.name] = {
            "count": int(mine.sum()),
            "completed": int(lat.size),
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "deadline_met": float(met[mine].mean()) if mine.any() else None,
        }
    return {"per_priority": per_priority,
            "results": {s.value: int((status == s.value).sum()) for s in Status},
            "submitted": submitted,
            "lost": submitted - len(records)}


def summarize(policy: str, records: Sequence[Record], span_s: float,
              busy_s: dict[str, float] | None = None, submitted: int | None = None,
              window_s: float = 0.0, **extra: Any) -> dict[str, Any]:
    """The results.json entry of one run (``submitted`` as in ``tally``; ``extra`` keys are
    added as they are). ``span_s``: first arrival to last result, s (utilisation's
    denominator); ``window_s``: first arrival to last arrival, s (goodput's; the span where it
    is 0)."""
    met = sum(r.deadline_met for r in records)
    per_s = window_s if window_s > 0 else span_s
    entry: dict[str, Any] = {
        "policy": policy,
        "goodput": float(met / per_s) if per_s > 0 else 0.0,
        **tally(records, submitted),
        "span_s": span_s,
        "window_s": per_s,
    }
    if busy_s is not None and span_s > 0:
        entry["utilization"] = {w: min(1.0, b / span_s) for w, b in sorted(busy_s.items())}
    entry.update(extra)
    return entry


def latencies_ms(records: Sequence[Record]) -> dict[str, list[float]]:
    """Completed tasks' latencies per class, for CDF plots."""
    out: dict[str, list[float]] = {p.name: [] for p in Priority}
    for r in records:
        if r.status == Status.COMPLETED.value:
            out[Priority(r.priority).name].append(r.total_ms)
    return out


def mean_entry(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Average several seeds' entries of one policy (counts summed, rates averaged)."""
    if len(entries) == 1:
        return entries[0]

    def avg(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return float(np.mean(vals)) if vals else None

    first = entries[0]
    merged: dict[str, Any] = {
        "policy": first["policy"],
        "goodput": avg([e["goodput"] for e in entries]),
        "per_priority": {
            name: {
                "count": sum(e["per_priority"][name]["count"] for e in entries),
                "completed": sum(e["per_priority"][name]["completed"] for e in entries),
                **{k: avg([e["per_priority"][name][k] for e in entries])
                   for k in ("p50_ms", "p95_ms", "p99_ms", "deadline_met")},
            } for name in first["per_priority"]
        },
        "results": {k: sum(e["results"][k] for e in entries) for k in first["results"]},
        "submitted": sum(e["submitted"] for e in entries),
        "lost": sum(e["lost"] for e in entries),
        "seeds": [e.get("seed") for e in entries],
        "per_seed": [{k: e[k] for k in ("seed", "goodput") if k in e} |
                     {"deadline_met": {n: p["deadline_met"] for n, p in e["per_priority"].items()}}
                     for e in entries],
    }
    if "false_rejection" in first:
        merged["false_rejection"] = merge_false_rejections(
            [e.get("false_rejection") for e in entries])
    if "utilization" in first:
        merged["utilization"] = {w: avg([e["utilization"].get(w) for e in entries])
                                 for w in first["utilization"]}
    return merged


def merge_false_rejections(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Several seeds' false-rejection counts as one (``sim_mode.false_rejections``): counts
    summed, the rate over the sum. None when the policy refuses nothing (every part None)."""
    given = [p for p in parts if p is not None]
    if not given:
        return None
    refused = sum(p["refused"] for p in given)
    would_meet = sum(p["would_meet"] for p in given)
    submitted = sum(p["submitted"] for p in given)
    return {"refused": refused, "would_meet": would_meet, "submitted": submitted,
            "rate": would_meet / refused if refused else 0.0,
            "rate_per_task": would_meet / submitted if submitted else 0.0,
            "displaced": sum(p.get("displaced", 0) for p in given),
            **{part: {n: {k: sum(p[part][n][k] for p in given) for k in ("refused", "would_meet")}
                      for n in given[0][part]}
               for part in ("per_priority", "per_status") if part in given[0]}}


def false_rejection_cell(entry: dict[str, Any]) -> str:
    """The table cell: false rejections as a share of the tasks submitted / of the
    refusals, with the counts (false / refused), or "n/a" for a policy that refuses nothing
    (or a run that did not measure it)."""
    fr = entry.get("false_rejection")
    if fr is None:
        return "n/a"
    return (f"{100 * fr['rate_per_task']:.2f}% / {100 * fr['rate']:.1f}% "
            f"({fr['would_meet']}/{fr['refused']})")


def per_pool(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Workers and utilisation per pool, from the scheduler actor's ``stats()``."""
    return {name: {"workers": p["workers"], "utilization": p["utilization"]}
            for name, p in stats["pools"].items()}


def print_summary(summary: dict[str, Any], title: str = "raysched") -> None:
    """Render one run's entry (``summarize``) as rich tables: per class, per status, per pool."""
    from rich.console import Console
    from rich.table import Table

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:,.1f}"

    console = Console()
    t = Table(title=f"{title}: per priority")
    for col in ("priority", "count", "completed", "p50 ms", "p95 ms", "p99 ms", "deadline met"):
        t.add_column(col, justify="right")
    for name, p in summary["per_priority"].items():
        met = "-" if p["deadline_met"] is None else f"{100 * p['deadline_met']:.1f}%"
        t.add_row(name, str(p["count"]), str(p["completed"]), ms(p["p50_ms"]), ms(p["p95_ms"]),
                  ms(p["p99_ms"]), met)
    console.print(t)
    r = Table(title=f"{title}: results")
    for col in ("submitted", *summary["results"], "lost"):
        r.add_column(col, justify="right")
    r.add_row(str(summary["submitted"]), *[str(v) for v in summary["results"].values()],
              str(summary["lost"]))
    console.print(r)
    if "per_pool" in summary:
        u = Table(title=f"{title}: per pool")
        for col in ("pool", "workers", "utilization"):
            u.add_column(col, justify="right")
        for name, p in summary["per_pool"].items():
            u.add_row(name, str(p["workers"]), f"{100 * p['utilization']:.1f}%")
        console.print(u)


def print_table(entries: list[dict[str, Any]], title: str) -> None:
    """One row per policy: goodput, deadline met and p99 per class, rejected, expired, util."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    cols = ["policy", "goodput/s", "vs fifo"]
    cols += [f"{p.name[:4]} met" for p in Priority]
    cols += [f"{p.name[:4]} p99 ms" for p in Priority]
    cols += ["rejected", "expired", "false rej: of tasks / of refusals", "util"]
    for c in cols:
        t.add_column(c, justify="right")
    fifo = next((e["goodput"] for e in entries if e["policy"] == "fifo"), None)
    for e in entries:
        pp = e["per_priority"]
        util = e.get("utilization")
        row = [e["policy"], f"{e['goodput']:.2f}",
               f"{e['goodput'] / fifo:.2f}x" if fifo else "-"]
        row += ["-" if pp[p.name]["deadline_met"] is None
                else f"{100 * pp[p.name]['deadline_met']:.2f}%" for p in Priority]
        row += ["-" if pp[p.name]["p99_ms"] is None else f"{pp[p.name]['p99_ms']:,.0f}"
                for p in Priority]
        row += [str(e["results"]["rejected"]), str(e["results"]["expired"]),
                false_rejection_cell(e),
                "-" if not util else f"{100 * float(np.mean(list(util.values()))):.0f}%"]
        t.add_row(*row)
    Console(width=200).print(t)


def write_report(out_dir: Path, entries: list[dict[str, Any]], meta: dict[str, Any],
                 sweep: dict[str, dict[float, dict[str, float | None]]] | None = None,
                 cdfs: dict[str, dict[str, list[float]]] | None = None) -> list[Path]:
    """results.json, report.md and the PNG plots; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json", out_dir / "report.md"]
    payload: dict[str, Any] = {"meta": meta, "policies": entries}
    if sweep:
        payload["sweep"] = {pol: {str(k): v for k, v in d.items()} for pol, d in sweep.items()}
    (out_dir / "results.json").write_text(json.dumps(payload, indent=2))
    written += _plots(out_dir, entries, sweep, cdfs)
    (out_dir / "report.md").write_text(_markdown(entries, meta, [p.name for p in written[2:]]))
    return written


def _markdown(entries: list[dict[str, Any]], meta: dict[str, Any], plots: list[str]) -> str:
    lines = ["# raysched benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "| policy | goodput/s | " + " | ".join(f"{p.name} met" for p in Priority)
              + " | " + " | ".join(f"{p.name} p99 ms" for p in Priority)
              + " | rejected | expired | false rejections: of tasks / of refusals |",
              "|---" * (3 + 2 * len(Priority) + 2) + "|"]
    for e in entries:
        pp = e["per_priority"]
        met = " | ".join("-" if pp[p.name]["deadline_met"] is None
                         else f"{100 * pp[p.name]['deadline_met']:.2f}%" for p in Priority)
        p99 = " | ".join("-" if pp[p.name]["p99_ms"] is None else f"{pp[p.name]['p99_ms']:,.0f}"
                         for p in Priority)
        lines.append(f"| {e['policy']} | {e['goodput']:.2f} | {met} | {p99} | "
                     f"{e['results']['rejected']} | {e['results']['expired']} | "
                     f"{false_rejection_cell(e)} |")
    lines += [""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"


def _plots(out_dir: Path, entries: list[dict[str, Any]],
           sweep: dict[str, dict[float, dict[str, float | None]]] | None,
           cdfs: dict[str, dict[str, list[float]]] | None) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'raysched[bench]'): no plots")
        return []
    written = []
    if sweep:
        fig, axes = plt.subplots(1, len(Priority), figsize=(4 * len(Priority), 3.5), sharey=True)
        for ax, p in zip(axes, Priority, strict=True):
            for pol, by_load in sweep.items():
                loads = sorted(by_load)
                ax.plot(loads, [100 * (by_load[x][p.name] or 0) for x in loads], marker="o",
                        label=pol)
            ax.set_title(p.name)
            ax.set_xlabel("offered load")
        axes[0].set_ylabel("deadline met %")
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / "deadline_met_vs_load.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    if cdfs:
        fig, axes = plt.subplots(1, len(Priority), figsize=(4 * len(Priority), 3.5))
        for ax, p in zip(axes, Priority, strict=True):
            for pol, lat in cdfs.items():
                xs = np.sort(np.asarray(lat[p.name]))
                if xs.size:
                    ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=pol)
            ax.set_xscale("log")
            ax.set_title(f"{p.name} latency CDF")
            ax.set_xlabel("ms")
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / "latency_cdf.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    with_util = [e for e in entries if e.get("utilization")]
    if with_util:
        workers = list(with_util[0]["utilization"])
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(workers) * len(with_util) ** 0.5), 3.5))
        width = 0.8 / len(with_util)
        for i, e in enumerate(with_util):
            ax.bar(np.arange(len(workers)) + i * width,
                   [100 * (e["utilization"].get(w) or 0) for w in workers], width,
                   label=e["policy"])
        ax.set_xticks(np.arange(len(workers)) + 0.4 - width / 2, workers, rotation=60,
                      fontsize=7)
        ax.set_ylabel("utilisation %")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / "utilization.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
