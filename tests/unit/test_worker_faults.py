"""What the core does when workers die or hang: who is charged, quarantine, pools that cannot
serve, and tasks a worker skips because their deadline passed before their turn."""

from __future__ import annotations

import pytest

from raysched.core import (
    CoreTask,
    Priority,
    ServicePrior,
    Status,
    TaskState,
    WorkerSpec,
    build_core,
)
from raysched.core.scheduler import CoreConfig
from tests.builders import failed, make_task, make_worker, ok

PRIOR = ServicePrior(fixed_s=0.05)


def cpu(worker_id: str, slots: int = 4) -> WorkerSpec:
    """A cpu worker, one task at a time, no context limit."""
    return make_worker(worker_id=worker_id, pool="cpu", slots=slots, prior=PRIOR,
                       max_context_tokens=0)


def task(task_id: str, deadline_s: float = 1e9) -> CoreTask:
    """A HIGH cpu task of no tokens."""
    return make_task(task_id=task_id, kind="work", priority=Priority.HIGH, deadline_s=deadline_s,
                     pool="cpu", num_prompt_tokens=0, max_new_tokens=0)


def test_prefetched_tasks_of_a_lost_worker_are_not_charged() -> None:
    core = build_core("raysched")
    core.add_worker(cpu("w0"), 0.0)
    for i in range(4):
        assert core.submit(task(f"t{i}"), 0.0) == []
    bound = [a.task.task_id for a in core.assign(0.0).assignments]
    assert bound == ["t0", "t1", "t2", "t3"]
    assert core.worker_lost("w0", 1.0, "worker hung") == []
    # Only t0 may have started on a one-at-a-time worker; the three behind it never ran.
    core.add_worker(cpu("w1"), 1.0)
    again = {a.task.task_id: a.attempt for a in core.assign(1.0).assignments}
    assert again == {"t0": 2, "t1": 1, "t2": 1, "t3": 1}


def test_a_poison_task_is_quarantined_then_failed_and_its_neighbours_complete() -> None:
    core = build_core("raysched")
    core.add_worker(cpu("w0"), 0.0)
    core.add_worker(cpu("w1"), 0.0)
    assert core.submit(task("poison"), 0.0) == []
    for i in range(6):
        assert core.submit(task(f"ok{i}"), 0.0) == []
    now, ended, n = 0.0, {}, 2
    for _ in range(10):
        now += 1.0
        for a in core.assign(now).assignments:
            if a.task.task_id != "poison":
                out = core.complete(ok(a, service_s=0.05), now)
                assert out is not None
                ended[out.task_id] = out
        poison_on = core.table.worker_of("poison")
        if poison_on is None:
            break
        if core.state_of("poison") is TaskState.RUNNING:
            w = core.table.workers[poison_on]
            # Run alone once quarantined: nothing else bound to its worker.
            if w.alone_task:
                assert list(w.in_flight) == ["poison"]
            for o in core.worker_lost(poison_on, now, "worker hung"):
                ended[o.task_id] = o
            core.add_worker(cpu(f"w{n}"), now)
            n += 1
    assert ended["poison"].status is Status.FAILED
    assert "quarantine" in ended["poison"].reason and ended["poison"].attempts == 3
    healthy = [o for tid, o in ended.items() if tid != "poison"]
    assert len(healthy) == 6 and all(o.status is Status.COMPLETED for o in healthy)
    assert all(o.attempts == 1 for o in healthy)


def test_a_pool_that_cannot_serve_refuses_at_once_and_ends_its_queue() -> None:
    core = build_core("raysched")
    core.add_pool("cpu")
    # No worker yet but one is coming: the task waits.
    assert core.submit(task("waits"), 0.0) == []
    ended = core.pool_down("cpu", "its workers failed to start 3 times", 1.0)
    assert [(o.task_id, o.status) for o in ended] == [("waits", Status.REJECTED)]
    assert "failed to start" in ended[0].reason
    [refused] = core.submit(task("late"), 2.0)
    assert refused.status is Status.REJECTED and "cannot serve" in refused.reason
    assert core.stats(2.0).pools["cpu"].down == "its workers failed to start 3 times"
    core.add_worker(cpu("w0"), 3.0)
    assert core.submit(task("back"), 3.0) == [] and core.stats(3.0).pools["cpu"].down == ""


def test_a_task_the_worker_skips_after_its_latest_start_ends_expired() -> None:
    core = build_core("raysched")
    core.add_worker(cpu("w0"), 0.0)
    assert core.submit(task("late", deadline_s=1.0), 0.0) == []
    [a] = core.assign(0.0).assignments
    assert a.latest_start_s == 1.0 - PRIOR.fixed_s
    out = core.complete(failed(("late", "w0"), error="", service_s=0.0, expired=True), 1.0)
    assert out is not None and out.status is Status.EXPIRED and "not run" in out.reason


def test_a_refusal_names_the_context_that_was_asked_for() -> None:
    core = build_core("raysched")
    core.add_worker(make_worker(worker_id="big", pool="llm-70b", slots=8, concurrency=8,
                                prior=PRIOR, max_context_tokens=4096), 0.0)
    t = make_task(task_id="ctx", kind="reasoning", priority=Priority.HIGH, deadline_s=100.0,
                  pool="llm-70b", num_prompt_tokens=100, max_new_tokens=50,
                  min_context_tokens=8000)
    [out] = core.submit(t, 0.0)
    assert out.status is Status.REJECTED and "8000 tokens" in out.reason


@pytest.mark.parametrize("max_attempts", [1, 2, 3])
def test_a_poison_task_behind_others_in_a_batch_is_the_one_that_fails(max_attempts: int) -> None:
    # One worker, one task at a time, four slots: [a, poison, b, c] go to it together, and it
    # reports them together, so when the poison kills it the report of a, which ran, dies too.
    # Each loss counts against every one of them; after two, each runs alone, and only the
    # poison, alone, kills its worker again. A shared loss ends no task for its attempts (the
    # one in front would fail in the poison's place).
    core = build_core("raysched", config=CoreConfig(max_attempts=max_attempts))
    core.add_worker(cpu("w0"), 0.0)
    for tid in ("a", "poison", "b", "c"):
        assert core.submit(task(tid), 0.0) == []
    now, ended, n = 0.0, {}, 1
    for _ in range(20):
        now += 1.0
        bound = core.assign(now).assignments
        if any(a.task.task_id == "poison" for a in bound):
            lost_on = core.table.worker_of("poison")
            assert lost_on is not None
            for o in core.worker_lost(lost_on, now, "worker died"):
                ended[o.task_id] = o
            core.add_worker(cpu(f"w{n}"), now)
            n += 1
            continue
        for a in bound:
            out = core.complete(ok(a, service_s=0.05), now)
            assert out is not None
            ended[out.task_id] = out
        if len(ended) == 4:
            break
    assert ended["poison"].status is Status.FAILED and "quarantine" in ended["poison"].reason
    assert all(ended[t].status is Status.COMPLETED for t in ("a", "b", "c"))
    assert ended["a"].attempts == 3 and ended["b"].attempts == ended["c"].attempts == 1
    # It killed three workers: two in the batch, one alone (charging only the task in front
    # let it kill two more, as the first of later batches, before it was quarantined).
    assert n - 1 == 3
