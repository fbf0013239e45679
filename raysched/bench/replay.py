"""Replaying a timed plan of tasks through a scheduler actor, for the demo and the Ray benchmarks.

``replay`` submits each ``(offset_s, Task)`` of a plan once its offset has passed, then waits for
the Results and counts what came back: ``lost`` (submitted, no Result within the wait) is a
count of handles, never inferred from the Results themselves.

``plan_of`` turns a simulated workload into such a plan for ``raysched bench --mode ray``, with
time compressed by ``time_scale`` (0.1 runs ten times faster than real time): arrivals,
deadlines and CPU service all shrink by the same factor. CPU tasks sleep for their service time
(``simulated_cpu_work``); LLM tasks run on the simulated engine, which always generates its whole
token budget, so each task's budget is set to its true length.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raysched.core.types import CHARS_PER_TOKEN
from raysched.errors import TaskTimeoutError
from raysched.sim.workers import SimTask

if TYPE_CHECKING:
    from raysched.client import Client, TaskHandle
    from raysched.models import Result, Task

# The CPU share each benchmark worker asks Ray for, in raysched's pools and the Serve peer's
# replicas alike, so both fit the same machine the same way.
CPU_WORKER_CPUS = 0.25
LLM_WORKER_CPUS = 0.1


def simulated_cpu_work(seconds: float) -> float:
    """Stand-in for a CPU model: holds the worker for ``seconds`` (simulated CPU work)."""
    time.sleep(seconds)
    return seconds


def to_task(st: SimTask, time_scale: float) -> Task:
    """The user ``Task`` that runs ``st`` on Ray ``1 / time_scale`` times faster than simulated."""
    from raysched.models import Task

    t = st.task
    sla_ms = max((t.deadline_s - st.arrival_s) * time_scale * 1e3, 1e-3)
    if t.pool.startswith("llm"):
        payload: dict[str, Any] = {"prompt": "x" * (t.num_prompt_tokens * CHARS_PER_TOKEN),
                                   "max_new_tokens": st.true_new_tokens}
    else:
        payload = {"fn": simulated_cpu_work, "args": (st.cpu_service_s * time_scale,)}
    return Task(id=t.task_id, kind=t.kind, priority=t.priority, sla_ms=sla_ms, payload=payload,
                requirements={"pool": t.pool})


def plan_of(tasks: Sequence[SimTask], time_scale: float) -> list[tuple[float, Task]]:
    """``(offset_s, Task)`` pairs of a simulated workload, offsets scaled by ``time_scale``."""
    return [(st.arrival_s * time_scale, to_task(st, time_scale)) for st in tasks]


@dataclass(frozen=True)
class Replay:
    """What a replay submitted and what came back."""

    received: list[tuple[TaskHandle, Result]]  # in submission order
    submitted: int
    start_s: float  # time.monotonic() at offset 0
    span_s: float  # offset 0 to the last Result (or the last submission, if later)

    @property
    def results(self) -> list[Result]:
        return [r for _, r in self.received]

    @property
    def lost(self) -> int:
        return self.submitted - len(self.received)


def replay(client: Client, plan: Sequence[tuple[float, Task]], wait_s: float,
           on_progress: Callable[[int, int], None] | None = None, poll_s: float = 0.002
           ) -> Replay:
    """Submit every task of ``plan`` (in offset order) at its offset, then wait up to ``wait_s``
    after the last submission for the Results.

    ``on_progress(submitted, finished)`` is called while it runs. Submitting many due tasks in
    one call keeps up with arrivals that come faster than ``poll_s``.
    """
    def progress() -> None:
        if on_progress is not None:
            on_progress(len(handles), len(handles) - client.outstanding())

    handles: list[TaskHandle] = []
    start = time.monotonic()
    i = 0
    while i < len(plan):
        now = time.monotonic() - start
        due = []
        while i < len(plan) and plan[i][0] <= now:
            due.append(plan[i][1])
            i += 1
        if due:
            handles.extend(client.submit_many(due))
        progress()
        time.sleep(poll_s)
    last_submit = time.monotonic()
    wait_until = last_submit + wait_s
    # Watch the count for the progress display; the handles themselves say what came back.
    while client.outstanding() and time.monotonic() < wait_until:
        progress()
        time.sleep(max(poll_s, 0.02))
    received = []
    for h in handles:
        try:
            received.append((h, h.result(timeout=max(0.0, wait_until - time.monotonic()))))
        except TaskTimeoutError:
            continue
    progress()
    ends = [h.resolved_at for h, _ in received if h.resolved_at is not None]
    span_s = max([last_submit, *ends]) - start
    return Replay(received, len(handles), start, span_s)
