"""Fairness the core promises: LOW work spreads over idle workers, and aging bounds starvation."""

from __future__ import annotations

import math
from typing import Any

import pytest

from raysched.core import CoreTask, Priority, Status, build_core
from raysched.core.scheduler import CoreConfig
from raysched.sim import SimTask, Simulator
from raysched.sim.workers import SimCPUWorker
from tests.builders import make_task


def cpu_workers(n: int, prior_s: float) -> dict[str, tuple[str, SimCPUWorker]]:
    return {f"cpu-{i}": ("cpu", SimCPUWorker(f"cpu-{i}", prior_s=prior_s)) for i in range(n)}


def task(task_id: str, priority: Priority, deadline_s: float, **kw: Any) -> CoreTask:
    """A cpu task of no tokens."""
    return make_task(task_id=task_id, kind="work", priority=priority, deadline_s=deadline_s,
                     pool="cpu", num_prompt_tokens=0, max_new_tokens=0, **kw)


def test_low_work_spreads_over_idle_workers() -> None:
    # Two idle identical workers, four LOW tasks of 400 ms with far deadlines: two each, so the
    # makespan is two services, not four.
    core = build_core("raysched")
    sim = Simulator(core, cpu_workers(2, prior_s=0.4), slots={"cpu-0": 4, "cpu-1": 4})
    tasks = [SimTask(0.0, task(f"low-{i}", Priority.LOW, 60.0), cpu_service_s=0.4)
             for i in range(4)]
    run = sim.run(tasks)
    by_worker: dict[str, int] = {}
    for o in run.outcomes:
        assert o.status is Status.COMPLETED
        by_worker[o.worker_id] = by_worker.get(o.worker_id, 0) + 1
    assert by_worker == {"cpu-0": 2, "cpu-1": 2}
    assert run.end_s == pytest.approx(0.8)


@pytest.mark.parametrize("low_deadline_s", [600.0, math.inf])
@pytest.mark.parametrize("high_slack_s", [30.0, 0.5])
def test_aging_bounds_how_long_low_work_waits_behind_a_saturating_stream(
        low_deadline_s: float, high_slack_s: float) -> None:
    # One worker, aging_s = 1, a HIGH stream at 1.2x its capacity for 10 s: a LOW task (far
    # deadline, or best effort) must start within about 2 x aging_s, not when the stream ends.
    # With 0.5 s deadlines the stream's first task is always tight (its slack is a few services),
    # which must not hold the aged task back either.
    aging_s, service_s = 1.0, 0.1
    core = build_core("raysched", config=CoreConfig(aging_s=aging_s))
    sim = Simulator(core, cpu_workers(1, prior_s=service_s))
    gap_s = service_s / 1.2
    tasks = [SimTask(i * gap_s, task(f"high-{i}", Priority.HIGH, i * gap_s + high_slack_s),
                     cpu_service_s=service_s) for i in range(int(10.0 / gap_s))]
    low = task("low", Priority.LOW, low_deadline_s, best_effort=math.isinf(low_deadline_s))
    tasks.append(SimTask(0.05, low, cpu_service_s=service_s))
    tasks.sort(key=lambda st: st.arrival_s)
    run = sim.run(tasks)
    [out] = [o for o in run.outcomes if o.task_id == "low"]
    assert out.status is Status.COMPLETED
    assert out.start_s is not None
    waited_s = out.start_s - out.submit_s
    assert waited_s <= 2 * aging_s + 2 * service_s, waited_s
