"""The simulator against Ray: one small workload, one seed, both drivers of the same core.

The policy is ``edf``: deadline order and least-loaded placement, nothing learned. ``raysched``'s
learned placement reacts to measured service times, which on Ray differ from run to run by a
few percent, so near ties between two idle workers may go either way; a decision-for-decision
comparison needs a policy whose decisions depend only on the workload.

Tolerance: a task's latency on Ray is within 30% + 60 ms (real time) of the simulated one;
the difference is Ray's dispatch and result round trips (a few ms each on this 2-core machine)
and the simulated engine stepping in whole tokens where the simulator is continuous. So two
tasks of one worker that the simulator has end closer than that may end in either order.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from raysched.bench.ray_mode import config_for, map_worker_ids
from raysched.bench.replay import plan_of, replay
from raysched.bench.report import records_from_results
from raysched.bench.sim_mode import run_sim
from raysched.bench.workloads import PoolSpec
from raysched.core.types import CoreTask, Priority
from raysched.sim.workers import SimTask

pytestmark = pytest.mark.ray

CLUSTER = (PoolSpec("cpu", 2), PoolSpec("llm-7b", 1, "7b", 4), PoolSpec("llm-70b", 1, "70b", 2))
TIME_SCALE = 0.5
POLICY = "edf"


def workload(seed: int = 11, n: int = 30) -> list[SimTask]:
    """Decisions that are clear-cut in both drivers: every 300 ms (sim time) either a pair of CPU
    tasks arrives together (they go to the two CPU workers) and ends within 200 ms, or an LLM
    request joins its pool's running batch."""
    rng = random.Random(seed)
    tasks: list[SimTask] = []
    for i in range(n):
        t = 0.3 * i
        prio = rng.choice(list(Priority))
        pool = rng.choice(["cpu", "llm-7b", "llm-70b"])
        if pool == "cpu":
            for j in range(2):
                core = CoreTask(f"x{i}-{j}", "classification", prio, t + 5.0, pool)
                tasks.append(SimTask(t, core, cpu_service_s=rng.uniform(0.05, 0.2)))
        else:
            new = rng.randint(20, 60)
            core = CoreTask(f"x{i}", "summarization", prio, t + 30.0, pool,
                            num_prompt_tokens=rng.randint(100, 400), max_new_tokens=new)
            tasks.append(SimTask(t, core, true_new_tokens=new))
    return tasks


def test_same_decisions_and_close_latencies(ray_session):
    import raysched

    tasks = workload()
    _, sim_records = run_sim(POLICY, tasks, CLUSTER)
    client = raysched.connect(config=config_for(CLUSTER, POLICY, TIME_SCALE, "xcheck"))
    try:
        run = replay(client, plan_of(tasks, TIME_SCALE), wait_s=600)
    finally:
        client.close()
        ray_session.kill(client.actor)
    assert run.submitted == len(tasks) and run.lost == 0
    ray_records = map_worker_ids(records_from_results(run.results, TIME_SCALE), CLUSTER)
    assert all(r.status == "completed" for r in ray_records + sim_records)

    arrival = {t.task.task_id: t.arrival_s for t in tasks}
    sim_ms = {r.task_id: r.total_ms for r in sim_records}

    def ends(records):
        per_worker = defaultdict(dict)
        for r in records:
            per_worker[r.worker_id][r.task_id] = arrival[r.task_id] + r.total_ms / 1e3
        return dict(per_worker)

    # Every task ran on the same worker in both, and two tasks of one worker end in the same
    # order wherever the simulator has them end further apart than the latency tolerance
    # (closer ones, in one batch, may swap as Ray's timing varies).
    sim_ends, ray_ends = ends(sim_records), ends(ray_records)
    assert {w: set(e) for w, e in ray_ends.items()} == {w: set(e) for w, e in sim_ends.items()}
    for worker, sim_end in sim_ends.items():
        for a in sim_end:
            for b in sim_end:
                tol_s = (0.3 * max(sim_ms[a], sim_ms[b]) + 60 / TIME_SCALE) / 1e3
                if sim_end[a] + tol_s < sim_end[b]:
                    assert ray_ends[worker][a] < ray_ends[worker][b], (worker, a, b)
    # Latencies: nine in ten tasks within the tolerance, and the median error well inside it. A
    # single task may run long when the machine stalls Ray's processes for a moment (one did on
    # a loaded CI run: 798 ms against 509 expected); a driver that diverges shifts many.
    errors = []
    for r in ray_records:
        real_ms, expected_ms = r.total_ms * TIME_SCALE, sim_ms[r.task_id] * TIME_SCALE
        errors.append((abs(real_ms - expected_ms) / (0.3 * expected_ms + 60), r.task_id))
    errors.sort()
    outside = [task_id for e, task_id in errors if e > 1.0]
    assert len(outside) <= len(errors) // 10, (outside, errors[-5:])
    assert errors[len(errors) // 2][0] <= 0.5, errors[len(errors) // 2]
