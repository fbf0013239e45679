"""Urgent work never waits behind long work: preemption of lower classes, in the simulator."""

from __future__ import annotations

import pytest

from raysched.core import Priority, Status, build_core
from raysched.sim import SimTask, Simulator
from raysched.sim.workers import SimLLMWorker
from tests.builders import make_task


def llm_workers(n: int, batch: int) -> dict[str, tuple[str, SimLLMWorker]]:
    return {f"llm-{i}": ("llm-7b", SimLLMWorker(f"llm-{i}", "7b", batch)) for i in range(n)}


def llm_task(task_id: str, priority: Priority, arrival_s: float, deadline_s: float,
             prompt: int, new: int) -> SimTask:
    t = make_task(task_id=task_id, kind="gen", priority=priority, deadline_s=deadline_s,
                  num_prompt_tokens=prompt, max_new_tokens=new)
    return SimTask(arrival_s, t, true_new_tokens=new)


@pytest.mark.parametrize(("workers", "batch"), [(1, 1), (2, 16)])
def test_critical_arriving_at_a_pool_full_of_long_low_work_meets_its_deadline(
        workers: int, batch: int) -> None:
    n_low = workers * batch
    tasks = [llm_task(f"low-{i}", Priority.LOW, 0.0, 600.0, 500, 1500) for i in range(n_low)]
    tasks.append(llm_task("crit", Priority.CRITICAL, 1.0, 2.5, 100, 32))
    run = Simulator(build_core("raysched"), llm_workers(workers, batch)).run(tasks)
    by_id = {o.task_id: o for o in run.outcomes}
    assert by_id["crit"].status is Status.COMPLETED and by_id["crit"].deadline_met
    # The work taken back runs again later and still ends once, completed.
    assert len(run.outcomes) == n_low + 1
    assert all(by_id[f"low-{i}"].status is Status.COMPLETED for i in range(n_low))


def test_edf_without_preemption_lets_the_same_critical_task_expire() -> None:
    # The reference case: the same workload under plain EDF (no preemption) misses.
    tasks = [llm_task("low-0", Priority.LOW, 0.0, 600.0, 500, 1500),
             llm_task("crit", Priority.CRITICAL, 1.0, 2.5, 100, 32)]
    run = Simulator(build_core("edf"), llm_workers(1, 1)).run(tasks)
    by_id = {o.task_id: o for o in run.outcomes}
    assert by_id["crit"].status is Status.EXPIRED


@pytest.mark.parametrize(("deadline_after_s", "preempts"), [(2.45, False), (3.2, True)])
def test_work_is_taken_back_only_for_a_task_predicted_to_make_it(
        deadline_after_s: float, preempts: bool) -> None:
    # One 7B worker, batch 2, both slots decoding long LOW generations over 12k-token prompts.
    # A CRITICAL task of 200 new tokens takes about 2.2 s alone, which admits it with a
    # deadline 2.45 s away; in the place of either LOW task, its decode steps read the other's
    # 12k+ tokens of KV cache as well, and the core predicts about 2.47 s, more than it has,
    # so it takes nothing back and the task expires. With 3.2 s it does take one back.
    tasks = [llm_task(f"low-{i}", Priority.LOW, 0.0, 900.0, 12_000, 1500) for i in range(2)]
    tasks.append(llm_task("crit", Priority.CRITICAL, 3.0, 3.0 + deadline_after_s, 10, 200))
    core = build_core("raysched")
    run = Simulator(core, llm_workers(1, 2)).run(tasks)
    by_id = {o.task_id: o for o in run.outcomes}
    assert by_id["crit"].status is (Status.COMPLETED if preempts else Status.EXPIRED)
    assert by_id["crit"].deadline_met is preempts
    # Without a preemption both LOW generations end about together, from their first start;
    # with one, the one taken back starts again and ends well after the other.
    ends = sorted(by_id[f"low-{i}"].end_s for i in range(2))
    assert (ends[1] - ends[0] > 2.0) is preempts


def test_a_task_taken_back_goes_on_from_where_it_stopped() -> None:
    # One 7B worker, batch 1, running a LOW generation of 1,500 tokens; a CRITICAL task at 1 s
    # takes its slot. Run again, the LOW task prefills its prompt and the tokens it had made
    # (as vLLM's recompute preemption does) and generates only the rest: it ends well before
    # a restart from nothing could (1 s after the time it takes alone).
    low = llm_task("low", Priority.LOW, 0.0, 600.0, 500, 1500)
    alone = Simulator(build_core("raysched"), llm_workers(1, 1)).run([low])
    alone_s = alone.outcomes[0].end_s
    core = build_core("raysched")
    run = Simulator(core, llm_workers(1, 1)).run(
        [low, llm_task("crit", Priority.CRITICAL, 1.0, 2.5, 100, 32)])
    by_id = {o.task_id: o for o in run.outcomes}
    assert by_id["crit"].deadline_met
    assert by_id["low"].status is Status.COMPLETED and by_id["low"].attempts == 1
    assert by_id["low"].end_s < alone_s + 0.5
    pool = core.stats(run.end_s).pools["llm-7b"]
    assert pool.preempted == 1 and 0 < pool.tokens_kept < 1500


def test_resume_rewrites_only_a_queued_task() -> None:
    core = build_core("raysched")
    assert core.resume("nobody", 10, 1) is None
    low = llm_task("low", Priority.LOW, 0.0, 600.0, 500, 1500)
    Simulator(core, llm_workers(1, 1)).run([low])
    assert core.resume("low", 10, 1) is None  # it has ended
