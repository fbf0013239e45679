"""Overload: bounded queues shed lower classes first; one tenant cannot fill a pool's queue."""

from __future__ import annotations

from raysched.core import CoreTask, Priority, SchedulerCore, ServicePrior, Status, TaskState
from tests.builders import make_core, make_task, make_worker

PRIOR = ServicePrior(fixed_s=0.01)


def core(**config) -> SchedulerCore:
    """One cpu worker "w" of one slot, no context limit."""
    return make_core(make_worker(worker_id="w", pool="cpu", prior=PRIOR, max_context_tokens=0),
                     **config)


def t(i: int, prio: Priority, tenant: str = "a") -> CoreTask:
    """Task ``t{i}`` on the cpu pool, of no tokens, with a deadline that never comes."""
    return make_task(task_id=f"t{i}", kind="k", priority=prio, deadline_s=1e9, pool="cpu",
                     num_prompt_tokens=0, max_new_tokens=0, tenant=tenant)


def test_full_pool_sheds_the_newest_lowest_class_task():
    c = core(max_queued_per_pool=3)
    for i, p in enumerate([Priority.LOW, Priority.LOW, Priority.MEDIUM]):
        assert c.submit(t(i, p), 0.0) == []
    # The arrival sheds t1, the newest LOW, and the submit itself says so.
    ended = c.submit(t(3, Priority.HIGH), 0.1)
    assert [(o.task_id, o.status) for o in ended] == [("t1", Status.REJECTED)]
    assert "shed under overload" in ended[0].reason
    assert c.assign(0.2).ended == []
    assert c.state_of("t1") is None and c.state_of("t3") in (TaskState.QUEUED, TaskState.RUNNING)
    # The worker took t3, so one place is free again; then the queue is full once more and a
    # LOW arrival, with nothing below it to shed, is itself rejected.
    assert c.submit(t(4, Priority.MEDIUM), 0.3) == []
    [out] = c.submit(t(5, Priority.LOW), 0.4)
    assert out.task_id == "t5" and out.status is Status.REJECTED
    assert "none of a lower class" in out.reason
    assert c.counts[Status.REJECTED] == 2
    assert [c.state_of(f"t{i}") for i in (0, 2, 4)] == [TaskState.QUEUED] * 3


def test_a_tenant_is_capped_and_others_still_get_in():
    c = core(max_queued_per_tenant=2)
    assert c.submit(t(0, Priority.LOW, "greedy"), 0.0) == []
    assert c.submit(t(1, Priority.LOW, "greedy"), 0.0) == []
    [out] = c.submit(t(2, Priority.CRITICAL, "greedy"), 0.0)
    assert out.task_id == "t2" and "tenant 'greedy'" in out.reason
    assert c.submit(t(3, Priority.LOW, "polite"), 0.0) == []
    # Once the greedy tenant's work leaves the queue, it may queue again.
    c.assign(0.0)
    assert c.submit(t(4, Priority.LOW, "greedy"), 0.1) == []
