"""Builders shared by every test tier: tasks, workers, cores and completions."""

from __future__ import annotations

from raysched.core import CoreTask, Outcome, SchedulerCore


def admit(core: SchedulerCore, task: CoreTask, now_s: float) -> Outcome | None:
    """Submit ``task``: its own rejection, or None when admitted.

    Fails the test if the submit also shed other tasks: a test that expects shedding reads
    ``core.submit``'s whole list instead.
    """
    outcomes = core.submit(task, now_s)
    own = [o for o in outcomes if o.task_id == task.task_id]
    others = [o for o in outcomes if o.task_id != task.task_id]
    assert not others, f"submitting {task.task_id} also ended {others}"
    assert len(own) <= 1
    return own[0] if own else None
