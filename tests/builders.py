"""Builders shared by every test tier: tasks, workers, cores and completions.

Each builder fills in defaults and takes any field as a keyword, so a test names only what it is
about. Ids come from one counter, so two builds never collide.
"""

from __future__ import annotations

import itertools
from typing import Any

from raysched.core import (
    Assignment,
    Completion,
    CoreConfig,
    CoreTask,
    Outcome,
    Priority,
    SchedulerCore,
    ServicePrior,
    WorkerSpec,
)

_ids = itertools.count()

DEFAULT_PRIOR = ServicePrior(fixed_s=0.05, prefill_s_per_token=1e-4, decode_s_per_step=0.02,
                             batch_slowdown=0.1)


def make_task(**kw: Any) -> CoreTask:
    """A ``CoreTask`` with defaults: unique id, summarization, MEDIUM, deadline 10 s, llm-7b,
    100 prompt tokens, 20 new tokens. ``deadline_s`` is absolute (the tests start at t=0)."""
    fields: dict[str, Any] = {"task_id": f"t{next(_ids)}", "kind": "summarization",
                              "priority": Priority.MEDIUM, "deadline_s": 10.0, "pool": "llm-7b",
                              "num_prompt_tokens": 100, "max_new_tokens": 20}
    fields.update(kw)
    return CoreTask(**fields)


def make_worker(**kw: Any) -> WorkerSpec:
    """A ``WorkerSpec`` of llm-7b with one slot, concurrency 1, ``DEFAULT_PRIOR``, 8k context."""
    fields: dict[str, Any] = {"worker_id": f"w{next(_ids)}", "pool": "llm-7b", "slots": 1,
                              "concurrency": 1, "prior": DEFAULT_PRIOR,
                              "max_context_tokens": 8192}
    fields.update(kw)
    return WorkerSpec(**fields)


def make_core(*workers: WorkerSpec, now_s: float = 0.0, **config: Any) -> SchedulerCore:
    """A core with ``CoreConfig(**config)`` and ``workers`` added at ``now_s``."""
    core = SchedulerCore(CoreConfig(**config))
    for w in workers:
        core.add_worker(w, now_s)
    return core


def _ids_of(assignment: Assignment | tuple[str, str]) -> tuple[str, str]:
    if isinstance(assignment, Assignment):
        return assignment.task.task_id, assignment.worker_id
    return assignment


def ok(assignment: Assignment | tuple[str, str], **kw: Any) -> Completion:
    """A successful ``Completion`` of ``assignment`` (or of a (task_id, worker_id) pair); 0.1 s
    of service unless ``service_s`` says otherwise."""
    task_id, worker_id = _ids_of(assignment)
    kw.setdefault("service_s", 0.1)
    return Completion(task_id=task_id, worker_id=worker_id, ok=True, **kw)


def failed(assignment: Assignment | tuple[str, str], *, error: str = "boom",
           retryable: bool = False, **kw: Any) -> Completion:
    """A failed ``Completion`` of ``assignment``: the task's own error unless ``retryable``
    (the worker's failure, worth another attempt)."""
    task_id, worker_id = _ids_of(assignment)
    kw.setdefault("service_s", 0.1)
    return Completion(task_id=task_id, worker_id=worker_id, ok=False, error=error,
                      retryable=retryable, **kw)


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
