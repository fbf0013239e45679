"""Summaries of a run's Results: per priority class, per status, per pool."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from raysched.bench.report import records_from_results, tally
from raysched.models import Result


def summarize(results: Iterable[Result], stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counts and latency percentiles per priority, and status totals (see ``tally``)."""
    out = tally(records_from_results(list(results)))
    if stats is not None:
        out["per_pool"] = {name: {"workers": p["workers"], "utilization": p["utilization"]}
                           for name, p in stats["pools"].items()}
    return out


def print_summary(summary: dict[str, Any], title: str = "raysched") -> None:
    """Render ``summarize()`` output as rich tables."""
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
    for s in summary["results"]:
        r.add_column(s, justify="right")
    r.add_row(*[str(v) for v in summary["results"].values()])
    console.print(r)
    if "per_pool" in summary:
        u = Table(title=f"{title}: per pool")
        for col in ("pool", "workers", "utilization"):
            u.add_column(col, justify="right")
        for name, p in summary["per_pool"].items():
            u.add_row(name, str(p["workers"]), f"{100 * p['utilization']:.1f}%")
        console.print(u)
