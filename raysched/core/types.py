"""Messages of the pure core: small frozen dataclasses, no I/O, no clock.

The user-facing pydantic models (``raysched.models``) are converted into these at the edge, so the
core never validates and never imports ray.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

# A rough token count for scheduling: about four characters per token for English text with
# BPE tokenizers (OpenAI's tokenizer guide gives the same rule of thumb).
CHARS_PER_TOKEN = 4


class Priority(enum.IntEnum):
    """Priority classes; a lower value runs first."""

    CRITICAL = 1
    HIGH = 2
    MEDIUM = 3
    LOW = 4


class Status(str, enum.Enum):
    """How a task ended. Every accepted or refused task ends in exactly one of these."""

    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class CoreTask:
    """What the core needs to order, admit and place one task."""

    task_id: str
    kind: str
    priority: Priority
    deadline_s: float
    pool: str
    num_prompt_tokens: int = 0
    max_new_tokens: int = 0
    best_effort: bool = False
    min_context_tokens: int = 0
    tenant: str = "default"


@dataclass(frozen=True, slots=True)
class ServicePrior:
    """A worker's own estimate of its service time, before any telemetry.

    ``service_s = fixed_s + prompt_tokens * prefill_s_per_token
                  + max_new_tokens * decode_step_s(batch)``
    with ``decode_step_s(batch) = decode_s_per_step * (1 + batch_slowdown * (batch - 1))``: a
    batched decoder reads the weights once per step, so a bigger batch slows each step only a
    little. A CPU worker has no tokens and is described by ``fixed_s`` alone.
    """

    fixed_s: float
    prefill_s_per_token: float = 0.0
    decode_s_per_step: float = 0.0
    batch_slowdown: float = 0.0

    def service_s(self, num_prompt_tokens: int, max_new_tokens: int, batch_size: int = 1) -> float:
        step_s = self.decode_s_per_step * (1.0 + self.batch_slowdown * max(batch_size - 1, 0))
        return self.fixed_s + num_prompt_tokens * self.prefill_s_per_token + max_new_tokens * step_s


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """A worker as the core sees it.

    ``concurrency`` is how many tasks the worker runs at once (an LLM actor's batch size, 1 for a
    CPU actor); ``slots`` is how many it may hold, the rest being a small prefetch that hides the
    dispatch round trip.
    """

    worker_id: str
    pool: str
    slots: int
    concurrency: int
    prior: ServicePrior
    max_context_tokens: int = 0
    node_id: str = ""

    def __post_init__(self) -> None:
        assert self.slots >= self.concurrency >= 1, "a worker needs slots >= concurrency >= 1"


@dataclass(frozen=True, slots=True)
class Assignment:
    """The core's decision: run ``task`` on ``worker_id`` now."""

    task: CoreTask
    worker_id: str
    attempt: int
    predicted_service_s: float
    predicted_finish_s: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one task inside the core; the drivers turn it into a user ``Result``."""

    task_id: str
    status: Status
    reason: str = ""
    worker_id: str = ""
    submit_s: float = 0.0
    start_s: float | None = None
    end_s: float = 0.0
    deadline_s: float = float("inf")
    attempts: int = 0
    output: Any = None
    priority: Priority = Priority.LOW
    pool: str = ""

    @property
    def deadline_met(self) -> bool:
        return self.status is Status.COMPLETED and self.end_s <= self.deadline_s
