"""What crosses actors: work items to the workers, completions and worker facts back.

Small frozen dataclasses that Ray pickles cheaply and that neither side validates again; the
user-facing pydantic models stay at the driver's edge (``raysched.models``). Workers
(``actors``) and the scheduler both import this module, and it imports only the core's types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from raysched.core.types import ServicePrior

# Features the CPU pool's fraud classifier takes (``actors.cpu_actor``); drivers validate
# against it before a task is queued.
FRAUD_NUM_FEATURES = 8


@dataclass(frozen=True, slots=True)
class Completion:
    """A worker's report on one task it ran (or failed to run)."""

    task_id: str
    worker_id: str
    ok: bool
    service_s: float
    output: Any = None
    error: str = ""
    # A failure of the worker rather than of the task (engine died): worth another attempt.
    retryable: bool = False
    # The worker did not start the task: its latest start had passed when its turn came.
    expired: bool = False
    # The binding this report is for (``WorkItem.binding``); 0 when the worker does not say.
    binding: int = 0
    # Telemetry: time queued inside the worker, tokens, and the batch the task ran in.
    worker_queue_s: float = 0.0
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    batch_size: int = 1
    # Telemetry from the engine's own per-request metrics, where it keeps them (vLLM), else the
    # defaults: why generation ended ("stop": end of sequence or a stop token; "length": the
    # token limit, max_new_tokens or the model's context), the time queued inside the engine
    # before it first ran, time to first token, time per output token after the first, and the
    # mean number of requests in the engine's steps while this one ran.
    finish_reason: str = ""
    engine_queue_s: float | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    engine_batch_size: float | None = None


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A task as it travels to a worker: the core's view plus the payload to run."""

    task_id: str
    kind: str
    priority: int
    deadline_s: float
    payload: Any
    # Past this moment (the scheduler's clock, seconds since the epoch) the task cannot meet
    # its deadline: the worker reports it ``expired`` instead of starting it.
    latest_start_s: float = float("inf")
    # Which binding of the task this is (``Assignment.binding``); echoed in the Completion.
    binding: int = 0


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker tells the scheduler about itself when it registers.

    ``engine`` names what runs the work (``cpu``, ``sim-7b``, ``hf``, ``vllm``); ``simulated``
    is true for engines that model time instead of computing; ``prior`` is the service model the
    scheduler starts from; ``max_context_tokens`` is 0 for workers without a context limit.
    """

    worker_id: str
    pool: str
    engine: str
    simulated: bool
    node_id: str
    prior: ServicePrior
    max_context_tokens: int = 0
    label: str = ""
