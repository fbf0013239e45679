"""Property-based tests (hypothesis) of queue safety behind the edge: nothing invalid enters the
core's queue, and the core keeps serving the valid tasks around the invalid ones.

Arrivals are valid tasks, valid tasks whose deadline has passed, and single-field corruptions of
valid tasks (the strategies of tests/strategies.py); each goes through ``Task.model_validate`` as
the client does, and only what validates is submitted to a core built as the scheduler actor
builds it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from raysched.config import SchedulerConfig, default_config
from raysched.core import CoreTask, SchedulerCore, ServicePrior, Status, TaskState
from raysched.models import Task
from tests.builders import admit, make_worker, ok
from tests.strategies import CONTEXT, SLOW, TASK_CORRUPTIONS, corruptions, valid_task_dicts

T0 = 1e6  # the scheduler's clock at the start of a run
CPU_PRIOR = ServicePrior(fixed_s=0.01)
LLM_PRIOR = ServicePrior(fixed_s=0.05, prefill_s_per_token=1e-4, decode_s_per_step=0.02,
                         batch_slowdown=0.1)


def live_core(policy: str) -> SchedulerCore:
    """A core as the scheduler actor builds it, with the default pools' workers joined."""
    config = SchedulerConfig(pools=default_config().pools, policy=policy)
    core = config.build_core()
    for pool in config.pools:
        assert isinstance(pool.replicas, int)
        for i in range(pool.replicas):
            prior = LLM_PRIOR if pool.kind == "llm" else CPU_PRIOR
            core.add_worker(make_worker(worker_id=f"{pool.name}-{i}", pool=pool.name,
                                        slots=pool.worker_slots, concurrency=pool.concurrency,
                                        prior=prior, max_context_tokens=1_048_576), T0)
    return core


def snapshot(core: SchedulerCore) -> tuple[Any, ...]:
    stats = core.stats(T0)
    return (core.queued(), core.running(), core.unfinished(), dict(core.counts),
            {p: s.queued for p, s in stats.pools.items()})


@st.composite
def traffic(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """A stream of arrivals: valid feasible tasks, valid tasks whose deadline_s has passed
    (best-effort or not), and single-field corruptions of valid tasks."""
    items = []
    for _ in range(draw(st.integers(1, 25))):
        what = draw(st.sampled_from(["ok", "ok", "past", "invalid", "invalid"]))
        data = draw(valid_task_dicts(feasible=True))
        if what == "past":
            for key in ("sla_ms", "deadline_s", "best_effort"):
                data.pop(key, None)
            data["deadline_s"] = draw(st.floats(0, T0, exclude_min=True, exclude_max=True))
            if draw(st.booleans()):
                data["best_effort"] = True
        elif what == "invalid":
            _, data = draw(corruptions(data, draw(st.sampled_from(TASK_CORRUPTIONS))))
        items.append((what, data))
    return items


@SLOW
@given(traffic())
@pytest.mark.parametrize("policy", ["raysched", "edf"])
def test_invalid_tasks_never_reach_the_queue_and_valid_ones_are_served(policy, items):
    core = live_core(policy)
    submitted: list[str] = []
    real_submit = core.submit

    def spy(task: CoreTask, now_s: float):
        submitted.append(task.task_id)
        return real_submit(task, now_s)

    core.submit = spy  # type: ignore[method-assign]
    admitted: set[str] = set()
    now = T0
    for what, data in items:
        now += 0.001
        before, calls = snapshot(core), len(submitted)
        try:
            task = Task.model_validate(data, context=CONTEXT)
        except ValidationError:
            assert what == "invalid", f"a valid {what} task failed validation: {data!r}"
            assert len(submitted) == calls and snapshot(core) == before
            continue
        assert what != "invalid", f"an invalid task passed validation: {task!r}"
        outcome = admit(core, task.to_core(now), now)
        assert submitted[-1] == task.id
        if what == "past" and not task.best_effort:
            assert outcome is not None and outcome.status is Status.REJECTED
            assert outcome.task_id == task.id and "infeasible" in outcome.reason, outcome.reason
            assert core.state_of(task.id) is None
            after = snapshot(core)
            assert after[:3] == before[:3] and after[4] == before[4]
            assert after[3][Status.REJECTED] == before[3][Status.REJECTED] + 1
        else:
            assert outcome is None, f"a feasible task was refused: {outcome}"
            assert core.state_of(task.id) is TaskState.QUEUED
            assert snapshot(core)[3] == before[3]  # no outcome counted for an admission
            assert sum(before[4][task.pool].values()) + 1 == core.queued(task.pool)
            assert core.queued() == before[0] + 1
            admitted.add(task.id)
    # Every admitted task runs to completion on a worker of its pool: the scheduler kept serving.
    pool_of = {w: s.spec.pool for w, s in core.table.workers.items()}
    completed: set[str] = set()
    for _ in range(10_000):
        if not core.unfinished():
            break
        now += 0.01
        decisions = core.assign(now)
        assert not decisions.ended, [(o.task_id, o.status, o.reason) for o in decisions.ended]
        for a in decisions.assignments:
            assert pool_of[a.worker_id] == a.task.pool
            outcome = core.complete(ok(a, service_s=0.01,
                                       num_prompt_tokens=a.task.num_prompt_tokens,
                                       num_generated_tokens=a.task.max_new_tokens), now)
            assert outcome is not None and outcome.status is Status.COMPLETED
            completed.add(outcome.task_id)
    assert completed == admitted
    assert core.queued() == core.running() == core.unfinished() == 0
    assert core.counts[Status.COMPLETED] == len(admitted)

