"""The simulator charges the scheduler its own work: a single server that saturates."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from raysched.core.policies import build_core
from raysched.core.types import CoreTask, Priority
from raysched.sim import SimCPUWorker, SimTask, Simulator
from raysched.sim.cost import SchedulerCost

SERVICE_S = 0.001


def _stream(rate_per_s: float, n: int, seed: int = 3) -> list[SimTask]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate_per_s)
        out.append(SimTask(t, CoreTask(f"t{i}", "k", Priority.HIGH, t + 60.0, "cpu"),
                           cpu_service_s=SERVICE_S))
    return out


def _run(cost: SchedulerCost | None, rate_per_s: float, n: int = 4_000) -> tuple[float, float]:
    """Mean latency (s) and the scheduler's busy share of the span, on 32 fast workers."""
    sim = Simulator(build_core("edf"), {f"w{i}": ("cpu", SimCPUWorker(f"w{i}", SERVICE_S))
                                        for i in range(32)}, cost=cost)
    run = sim.run(_stream(rate_per_s, n))
    assert len(run.outcomes) == n
    latencies = [o.end_s - o.submit_s for o in run.outcomes]
    span_s = run.end_s - run.outcomes[0].submit_s
    return sum(latencies) / n, run.scheduler_busy_s / span_s


def test_a_free_scheduler_changes_nothing() -> None:
    free, busy = _run(None, 2_000.0)
    same, _ = _run(SchedulerCost(), 2_000.0)
    assert free == same and busy == 0.0
    assert free == pytest.approx(SERVICE_S, rel=0.05)  # 32 workers: hardly any queueing


def test_below_its_ceiling_the_scheduler_adds_its_cost_and_is_busy_in_proportion() -> None:
    cost = SchedulerCost(submit_s=50e-6, assign_s=50e-6, complete_s=50e-6, messaging_s=50e-6)
    assert cost.ceiling_tasks_per_s == pytest.approx(5_000.0)
    mean_s, busy = _run(cost, 1_000.0)
    assert busy == pytest.approx(0.2, abs=0.03)  # 1,000 tasks/s x 200 µs
    assert SERVICE_S + 150e-6 < mean_s < SERVICE_S + 600e-6


def test_past_its_ceiling_the_scheduler_is_the_bottleneck_and_shards_lift_it() -> None:
    cost = SchedulerCost(submit_s=100e-6, assign_s=100e-6, complete_s=100e-6, messaging_s=100e-6)
    mean_s, busy = _run(cost, 4_000.0)  # 1.6x its ceiling of 2,500 tasks/s
    assert busy > 0.95 and mean_s > 0.1  # a queue builds at the scheduler, not at the workers
    mean_sharded_s, busy_sharded = _run(cost.with_shards(4), 4_000.0)
    assert busy_sharded == pytest.approx(0.4, abs=0.05) and mean_sharded_s < 0.01


def test_costs_come_from_an_overhead_report_or_the_reference(tmp_path: Path) -> None:
    report = tmp_path / "overhead.json"
    report.write_text(json.dumps({"machine": {"cpu": "test cpu"}, "scheduler_cost": {
        "submit_s": 1e-5, "assign_s": 2e-5, "complete_s": 3e-5, "messaging_s": 4e-5}}))
    cost = SchedulerCost.parse(str(report), shards=2)
    assert cost.per_task_s == pytest.approx(5e-5) and "test cpu" in cost.source
    assert SchedulerCost.parse("none").ceiling_tasks_per_s == float("inf")
    assert SchedulerCost.parse("reference").per_task_s > 0
    (tmp_path / "bare.json").write_text("{}")
    with pytest.raises(ValueError, match="no scheduler_cost"):
        SchedulerCost.parse(str(tmp_path / "bare.json"))
