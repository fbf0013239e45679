"""Pure decision logic of raysched: no ray, no asyncio, no clock reads (time is an argument)."""

from raysched.core.load import LoadTable, WorkerLoad
from raysched.core.placement import (
    PLACEMENTS,
    LeastCompletionTime,
    Placement,
    PriorEstimator,
    ServiceEstimator,
    make_placement,
)
from raysched.core.protocol import Completion
from raysched.core.queue import DeadlineQueue
from raysched.core.scheduler import CoreConfig, Decisions, SchedulerCore
from raysched.core.types import (
    Assignment,
    CoreTask,
    Outcome,
    Priority,
    ServicePrior,
    Status,
    WorkerSpec,
)

__all__ = [
    "PLACEMENTS", "Assignment", "Completion", "CoreConfig", "CoreTask", "DeadlineQueue",
    "Decisions", "LeastCompletionTime", "LoadTable", "Outcome", "Placement", "PriorEstimator",
    "Priority", "SchedulerCore", "ServiceEstimator", "ServicePrior", "Status", "WorkerLoad",
    "WorkerSpec", "make_placement",
]
