"""Pure decision logic of raysched: no ray, no asyncio, no clock reads (time is an argument)."""

from raysched.core.load import LoadTable, WorkerLoad
from raysched.core.placement import (
    LeastCompletionTime,
    Placement,
    PriorEstimator,
    ServiceEstimator,
)
from raysched.core.policies import PLACEMENTS, POLICIES, build_core, make_placement
from raysched.core.protocol import Completion, WorkerInfo, WorkItem
from raysched.core.queue import DeadlineQueue
from raysched.core.scheduler import CoreConfig, Decisions, SchedulerCore
from raysched.core.types import (
    Assignment,
    CoreStats,
    CoreTask,
    Outcome,
    PoolStats,
    Preemption,
    Priority,
    ServicePrior,
    Status,
    TaskState,
    WorkerSpec,
    WorkerStats,
)

__all__ = [
    "PLACEMENTS", "POLICIES", "Assignment", "Completion", "CoreConfig", "CoreStats", "CoreTask",
    "DeadlineQueue", "Decisions", "LeastCompletionTime", "LoadTable", "Outcome", "Placement",
    "PoolStats", "Preemption", "PriorEstimator", "Priority", "SchedulerCore", "ServiceEstimator",
    "ServicePrior", "Status", "TaskState", "WorkItem", "WorkerInfo", "WorkerLoad", "WorkerSpec",
    "WorkerStats", "build_core", "make_placement",
]
