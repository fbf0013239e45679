"""Routing across pools: a task that may run on several pools goes to the cheapest (the first
its driver names) predicted to meet its deadline with room to spare, else to the one predicted
to finish first."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from raysched.core import Priority, ServicePrior
from raysched.models import Task
from tests.builders import admit, make_core, make_task, make_worker

CHEAP_S, BIG_S = 0.5, 0.1  # the cheap pool's service, the big (expensive, fast) pool's


def _core(**config):
    return make_core(make_worker(worker_id="cheap-0", pool="cheap", prior=ServicePrior(CHEAP_S)),
                     make_worker(worker_id="big-0", pool="big", prior=ServicePrior(BIG_S)),
                     **config)


def _task(deadline_s: float, **kw):
    return make_task(pool="cheap", alternatives=("big",), deadline_s=deadline_s, **kw)


def _pool_of(core, task_id: str) -> str:
    [a] = [a for a in core.assign(0.0).assignments if a.task.task_id == task_id]
    return a.task.pool


def test_the_cheaper_pool_takes_the_task_when_it_meets_the_deadline_with_room() -> None:
    core = _core()
    t = _task(deadline_s=2.0)
    assert admit(core, t, 0.0) is None
    assert _pool_of(core, t.task_id) == "cheap"


def test_a_task_without_a_deadline_goes_to_the_cheaper_pool() -> None:
    core = _core()
    t = _task(deadline_s=float("inf"), best_effort=True)
    assert admit(core, t, 0.0) is None
    assert _pool_of(core, t.task_id) == "cheap"


def test_a_deadline_only_the_faster_pool_meets_goes_there() -> None:
    core = _core()
    t = _task(deadline_s=0.4)  # 0.5 s on the cheap pool cannot make it
    assert admit(core, t, 0.0) is None
    assert _pool_of(core, t.task_id) == "big"


def test_a_busy_cheap_pool_sends_work_to_the_next_pool() -> None:
    core = _core()
    for i in range(3):  # 1.5 s of work queued on the cheap pool, 0.5 s of it running
        assert admit(core, make_task(task_id=f"q{i}", pool="cheap", deadline_s=60.0), 0.0) is None
    core.assign(0.0)
    t = _task(deadline_s=1.5)  # idle, the cheap pool would do; behind that work it cannot
    assert admit(core, t, 0.0) is None
    assert _pool_of(core, t.task_id) == "big"
    # Lower-class work queued ahead does not count: a CRITICAL task still goes cheap.
    urgent = _task(deadline_s=5.0, priority=Priority.CRITICAL)
    core2 = _core()
    for i in range(3):
        admit(core2, make_task(task_id=f"low{i}", pool="cheap", deadline_s=60.0,
                               priority=Priority.LOW), 0.0)
    assert admit(core2, urgent, 0.0) is None
    assert core2._queues["cheap"].depth(Priority.CRITICAL) == 1


def test_when_no_pool_makes_it_the_earliest_finish_wins_and_a_down_pool_is_passed_over() -> None:
    core = _core(admission=False)
    t = _task(deadline_s=0.05)  # neither pool meets it; the big one finishes first
    assert admit(core, t, 0.0) is None
    assert _pool_of(core, t.task_id) == "big"
    down = _core()
    down.pool_down("big", "no GPU", 0.0)
    t2 = _task(deadline_s=0.4)
    refusal = admit(down, t2, 0.0)  # only the cheap pool is left, and it cannot make it
    assert refusal is not None and "infeasible deadline" in refusal.reason
    assert refusal.pool == "cheap"


def test_the_edge_checks_every_pool_a_task_names() -> None:
    t = Task(kind="summarization", sla_ms=5_000, requirements={"pools": ["llm-7b", "llm-70b"]},
             payload={"prompt": "p", "max_new_tokens": 8})
    assert t.pool == "llm-7b" and t.pools == ("llm-7b", "llm-70b")
    record = t.to_record()
    assert record.pool == "llm-7b" and record.alternatives == ("llm-70b",)
    assert record.to_core(0.0).alternatives == ("llm-70b",)
    with pytest.raises(ValidationError, match="not both"):
        Task(kind="summarization", sla_ms=5_000,
             requirements={"pool": "llm-7b", "pools": ["llm-70b"]},
             payload={"prompt": "p", "max_new_tokens": 8})
    with pytest.raises(ValidationError, match="unknown pool 'gpu-big'"):
        Task.model_validate({"kind": "summarization", "sla_ms": 5_000,
                             "requirements": {"pools": ["llm-7b", "gpu-big"]},
                             "payload": {"prompt": "p", "max_new_tokens": 8}},
                            context={"pools": {"llm-7b": "llm", "cpu": "cpu"}})
    with pytest.raises(ValidationError, match="payload.prompt is required .* on llm-70b"):
        Task(kind="custom", sla_ms=5_000, requirements={"pools": ["cpu", "llm-70b"]},
             payload={"fn": print})


def test_a_callable_or_features_for_llm_pools_only_is_refused() -> None:
    # They would never run: an LLM pool generates from the prompt.
    for extra in ({"fn": print}, {"features": [0.1] * 8}):
        with pytest.raises(ValidationError, match="would never run"):
            Task(kind="summarization", sla_ms=5_000,
                 payload={"prompt": "p", "max_new_tokens": 8, **extra})
    # With a CPU pool among those it may run on, the callable is what runs there.
    t = Task(kind="custom", sla_ms=5_000, requirements={"pools": ["cpu", "llm-7b"]},
             payload={"fn": print, "prompt": "p", "max_new_tokens": 8})
    assert t.pools == ("cpu", "llm-7b")
