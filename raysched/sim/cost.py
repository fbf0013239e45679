"""What the scheduler itself spends, so the simulator can charge it.

The live scheduler is one actor with one event loop: every submission, binding and completion
takes some of its time, and past a few thousand tasks a second it is the limit, not the
workers. ``SchedulerCost`` gives the simulator those costs per task; the simulator then runs
the scheduler as a single server (an event waits while the loop is busy) and reports how busy
it was, so a projection to hundreds of workers shows where one scheduler saturates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Measured with ``python benchmarks/overhead.py --quick --parts cd`` on a 2-core Intel Xeon VM
# (Python 3.11, Ray 2.60; the scheduler, 2 CPU workers and the driver sharing the two cores):
# the in-process parts from part (d), the messaging share from part (c)'s saturated
# client.map rate of about 6,000 no-op tasks/s. Used when no measurement of the machine at hand
# is given.
REFERENCE_SUBMIT_S = 18e-6
REFERENCE_ASSIGN_S = 19e-6
REFERENCE_COMPLETE_S = 15e-6
REFERENCE_MESSAGING_S = 113e-6


@dataclass(frozen=True, slots=True)
class SchedulerCost:
    """Seconds of the scheduler's event loop per task, by what it does for the task.

    ``submit_s``: admitting it (the core and the task log); ``assign_s``: binding it to a
    worker; ``complete_s``: taking its completion and posting its result; ``messaging_s``:
    Ray's share in the scheduler process (receiving the submission, sending the work, taking
    the worker's report, handing the result to the driver). ``shards`` scheduler actors split
    the load evenly: each task costs ``1 / shards`` of its figures (an approximation: real
    shards each keep their own queue). ``source`` says where the figures come from.
    """

    submit_s: float = 0.0
    assign_s: float = 0.0
    complete_s: float = 0.0
    messaging_s: float = 0.0
    shards: int = 1
    source: str = "none"

    @property
    def per_task_s(self) -> float:
        """The scheduler time one task costs, over all shards."""
        return (self.submit_s + self.assign_s + self.complete_s + self.messaging_s) / self.shards

    @property
    def ceiling_tasks_per_s(self) -> float:
        """The most tasks a second the scheduler(s) can carry (infinite at no cost)."""
        return 1.0 / self.per_task_s if self.per_task_s > 0 else float("inf")

    def charge(self, *, submits: int = 0, assigns: int = 0, completes: int = 0) -> float:
        """Seconds these operations occupy the scheduler; Ray's messaging share is charged
        with the submission (half) and the completion (half)."""
        return ((submits * (self.submit_s + self.messaging_s / 2)
                 + assigns * self.assign_s
                 + completes * (self.complete_s + self.messaging_s / 2)) / self.shards)

    def with_shards(self, shards: int) -> SchedulerCost:
        return SchedulerCost(self.submit_s, self.assign_s, self.complete_s, self.messaging_s,
                             shards, self.source)

    @classmethod
    def reference(cls, shards: int = 1) -> SchedulerCost:
        """The figures measured on the reference machine (see the constants above)."""
        return cls(REFERENCE_SUBMIT_S, REFERENCE_ASSIGN_S, REFERENCE_COMPLETE_S,
                   REFERENCE_MESSAGING_S, shards, "reference 2-core machine")

    @classmethod
    def from_overhead(cls, path: str | Path, shards: int = 1) -> SchedulerCost:
        """The figures ``benchmarks/overhead.py`` measured on this machine (its JSON report's
        ``scheduler_cost``); raises ``ValueError`` if the report has none (run part d)."""
        report: dict[str, Any] = json.loads(Path(path).read_text())
        cost = report.get("scheduler_cost")
        if not cost:
            raise ValueError(f"{path} has no scheduler_cost: run benchmarks/overhead.py "
                             f"--parts cd")
        return cls(cost["submit_s"], cost["assign_s"], cost["complete_s"],
                   cost.get("messaging_s", 0.0), shards,
                   f"{path} ({report.get('machine', {}).get('cpu', 'this machine')})")

    @classmethod
    def parse(cls, spec: str, shards: int = 1) -> SchedulerCost:
        """``none`` (free), ``reference``, or the path of an overhead report."""
        if spec == "none":
            return cls(shards=shards)
        if spec == "reference":
            return cls.reference(shards)
        return cls.from_overhead(spec, shards)
