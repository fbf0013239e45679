"""The learned idle model under contention: admission's best case on a busy pool of identical
workers stays at the engine prior, and a worker that really slows down is still seen."""

from __future__ import annotations

import random

from raysched.core.policies import build_core
from raysched.core.scheduler import SchedulerCore
from raysched.core.types import Priority
from raysched.sim import SimLLMWorker, SimTask, Simulator
from tests.builders import make_task

NUM_WORKERS = 4
KIND = "summarization"


def long_prompt_tasks(n: int, rate_per_s: float, seed: int) -> list[SimTask]:
    """Poisson arrivals of long prompts (500-4,000 tokens) with short answers (4-32 of a
    32-token budget), HIGH with a 60 s deadline, so every task runs and none is refused."""
    rng = random.Random(seed)
    tasks, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(rate_per_s)
        core = make_task(task_id=f"s{i}", kind=KIND, priority=Priority.HIGH,
                         deadline_s=t + 60.0, num_prompt_tokens=rng.randint(500, 4000),
                         max_new_tokens=32)
        tasks.append(SimTask(t, core, true_new_tokens=rng.randint(4, 32)))
    return tasks


def identical_pool() -> dict[str, tuple[str, SimLLMWorker]]:
    return {f"w{i}": ("llm-7b", SimLLMWorker(f"w{i}", "7b", 16)) for i in range(NUM_WORKERS)}


def probe_ratio(core: SchedulerCore) -> float:
    """Admission's best case for a probe task over the engine prior's idle figure for it."""
    probe = make_task(kind=KIND, num_prompt_tokens=2000, max_new_tokens=32)
    worker = next(iter(core.table.workers.values()))
    est = core.placement.estimator  # type: ignore[attr-defined]
    prior_s = worker.spec.prior.service_s(probe.num_prompt_tokens,
                                          est.short_new_tokens(probe), 1)
    best_s = core.placement.best_case_s(probe, core.table)
    assert best_s is not None
    return best_s / prior_s


def run_at(rate_per_s: float) -> SchedulerCore:
    core = build_core("raysched")
    Simulator(core, identical_pool()).run(long_prompt_tasks(1500, rate_per_s, seed=4))
    return core


def test_the_admission_best_case_does_not_inflate_with_load() -> None:
    # Each task takes about 0.2 s of prefill alone; four workers' compute is saturated near 20
    # tasks a second. At 2/s tasks mostly run alone; at 16/s every batch computes others'
    # prompts, which makes measured service several times the idle figure.
    quiet, busy = run_at(2.0), run_at(16.0)
    contended = busy.placement.estimator.factor(  # type: ignore[attr-defined]
        KIND, next(iter(busy.table.workers.values())))
    assert contended > 1.5, "the busy run must be contended for the test to mean anything"
    for core in (quiet, busy):
        assert 0.85 < probe_ratio(core) < 1.15
    assert abs(probe_ratio(busy) - probe_ratio(quiet)) < 0.1


def test_a_slowed_worker_is_seen_on_a_busy_pool_within_tens_of_completions() -> None:
    tasks = long_prompt_tasks(3000, 14.0, seed=7)
    drift_s = tasks[1500].arrival_s
    core = build_core("raysched")
    est = core.placement.estimator  # type: ignore[attr-defined]
    sim = Simulator(core, identical_pool())
    slowed = core.table.workers["w0"]
    others = [core.table.workers[f"w{i}"] for i in range(1, NUM_WORKERS)]
    # After each outcome: the slowed worker's completions so far and its idle factor over the
    # mean of the others'.
    trail: list[tuple[int, float]] = []

    def note(_: int) -> None:
        rest = sum(est.idle_factor(KIND, w) for w in others) / len(others)
        trail.append((slowed.completed, est.idle_factor(KIND, slowed) / rest))

    run = sim.run(tasks, on_progress=note, speed_changes=[(drift_s, "w0", 3.0)])
    before = [r for (_, r), o in zip(trail, run.outcomes, strict=True) if o.end_s < drift_s]
    assert 0.8 < before[-1] < 1.25, "identical workers share one idle model before the drift"
    at_drift = slowed.completed - sum(1 for o in run.outcomes
                                      if o.worker_id == "w0" and o.end_s >= drift_s)
    seen = next(n for n, r in trail if n > at_drift and r > 2.0)
    assert seen - at_drift <= 50, f"seen after {seen - at_drift} completions on the slowed worker"
    for w in others:
        assert 0.85 < est.idle_factor(KIND, w) < 1.15
