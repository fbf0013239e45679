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


class TaskState(enum.IntEnum):
    """Where an unfinished task is inside the core; a finished one has left it (an Outcome)."""

    QUEUED = 1  # in its pool's deadline queue
    RUNNING = 2  # bound to a worker, in that worker's row of the load table
    CANCELLING = 3  # cancelled while running: its slot stays taken until the worker reports


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
    # Other pools that may run it, in the driver's order of preference after ``pool`` (the
    # cheaper first); the core routes it to one of them when it is submitted.
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServicePrior:
    """A worker's own estimate of its service time, before any telemetry.

    ``service_s = fixed_s + prompt_tokens * prefill_s_per_token
                  + max_new_tokens * decode_step_s(batch)``
    with ``decode_step_s(batch) = decode_s_per_step * (1 + batch_slowdown * (batch - 1))``: a
    batched decoder reads the weights once per step, so a bigger batch slows each step only a
    little. A CPU worker has no tokens and is described by ``fixed_s`` alone.

    Where the prior knows what a token of KV cache costs a decode step (``kv_s_per_token``,
    seconds per token in the batch, and ``context_tokens``, the context per sequence that
    ``decode_s_per_step`` and ``batch_slowdown`` were figured at), a step can instead be figured
    for the KV cache the batch really holds (``kv_tokens``): a batch of long contexts reads more
    bytes per step than one of short ones of the same size.
    """

    fixed_s: float
    prefill_s_per_token: float = 0.0
    decode_s_per_step: float = 0.0
    batch_slowdown: float = 0.0
    kv_s_per_token: float = 0.0
    context_tokens: int = 0

    def decode_step_s(self, batch_size: int = 1, kv_tokens: float | None = None) -> float:
        """One decode step of a batch of ``batch_size`` sequences holding ``kv_tokens`` tokens
        of KV cache (None: each at the typical context), in seconds."""
        if kv_tokens is not None and self.kv_s_per_token:
            # The one-sequence step at its typical context, less that context, plus the batch's.
            return self.decode_s_per_step + self.kv_s_per_token * (kv_tokens - self.context_tokens)
        if batch_size > 1:
            return self.decode_s_per_step * (1.0 + self.batch_slowdown * (batch_size - 1))
        return self.decode_s_per_step

    def service_s(self, num_prompt_tokens: int, max_new_tokens: int, batch_size: int = 1,
                  kv_tokens: float | None = None) -> float:
        """Seconds for one request, in a batch of ``batch_size`` holding ``kv_tokens`` of KV
        cache (see ``decode_step_s``)."""
        if not max_new_tokens:  # a CPU task, or a prefill alone: no decode step to price
            return self.fixed_s + num_prompt_tokens * self.prefill_s_per_token
        return (self.fixed_s + num_prompt_tokens * self.prefill_s_per_token
                + max_new_tokens * self.decode_step_s(batch_size, kv_tokens))


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
    # Whether a running task can be stopped part-way (an LLM engine aborts a sequence); a
    # worker that cannot may still give back tasks that wait in its prefetch slots.
    preemptible: bool = False

    def __post_init__(self) -> None:
        assert self.slots >= self.concurrency >= 1, "a worker needs slots >= concurrency >= 1"


# Not frozen: one is built per task on the hot path, and a frozen dataclass's __init__ (one
# object.__setattr__ per field) costs about three times as much. Treat it as a value.
@dataclass(slots=True)
class Assignment:
    """The core's decision: run ``task`` on ``worker_id`` now."""

    task: CoreTask
    worker_id: str
    attempt: int
    predicted_service_s: float
    predicted_finish_s: float
    # The last moment the task may start and still meet its deadline on an idle worker (inf
    # when deadlines are not enforced): a worker that reaches it later skips the task.
    latest_start_s: float = float("inf")
    # Counts this task's bindings to workers; a worker echoes it in its Completion, so a report
    # from an earlier binding (one taken back by preemption) is told from the current one.
    binding: int = 0


@dataclass(frozen=True, slots=True)
class Preemption:
    """The core took ``task_id`` back from ``worker_id`` (to make room for ``for_task_id``):
    the driver aborts it there; the task is queued again, its attempt not charged.
    ``binding``: the attempt taken back (``Assignment.binding``)."""

    task_id: str
    worker_id: str
    for_task_id: str
    binding: int = 0


@dataclass(slots=True)  # not frozen, as ``Assignment``: one per task on the hot path
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


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One pool's queue and load at a moment.

    ``queued`` and ``oldest_wait_s`` are keyed by class name (``CRITICAL`` .. ``LOW``);
    ``backlog_s`` is the predicted seconds of work in flight, summed over workers;
    ``utilization`` is the mean over workers of the fraction of time each had work in flight.
    ``down`` is empty while the pool can serve, else why it cannot (no worker and none coming).
    ``preempted``: tasks taken back from its workers so far; ``tokens_kept``: the tokens those
    that ran again did not have to generate again (``SchedulerCore.resume``).
    """

    queued: dict[str, int]
    oldest_wait_s: dict[str, float]
    workers: int
    in_flight: int
    free_slots: int
    backlog_s: float
    utilization: float
    down: str = ""
    preempted: int = 0
    tokens_kept: int = 0


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """One worker's row of the load table at a moment (``backlog_s``: predicted seconds)."""

    pool: str
    in_flight: int
    free_slots: int
    backlog_s: float
    completed: int
    utilization: float


@dataclass(frozen=True, slots=True)
class CoreStats:
    """A snapshot of the core: per pool, per worker, and results so far by status value."""

    pools: dict[str, PoolStats]
    workers: dict[str, WorkerStats]
    results: dict[str, int]
