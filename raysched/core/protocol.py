"""What crosses actors: tasks in, work items to the workers, completions and results back.

Small frozen dataclasses that Ray pickles cheaply and that no side validates again: a driver
validates its ``Task`` once, at the edge (``raysched.models``), and sends a ``TaskRecord``; the
scheduler answers with ``ResultRecord``s, from which the driver builds its ``Result``s. Workers
(``actors``), the scheduler and the drivers all import this module, and it imports only the
core's types.

A payload (or an output) larger than ``INLINE_PAYLOAD_BYTES`` travels by reference: the record
holds a Ray object ref to it, so the scheduler passes the ref on and never copies the bytes.

Between a driver and the scheduler the records travel as plain tuples (``to_wire`` and
``from_wire``): Ray sends tuples of numbers and strings as msgpack, which costs it less, per
message, than pickling dataclasses (about 0.15 ms a hop on a 2-core machine,
``benchmarks/overhead.py`` part (c)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from raysched.core.types import CoreTask, Priority, ServicePrior, Status

# Features the CPU pool's fraud classifier takes (``actors.cpu_actor``); drivers validate
# against it before a task is queued.
FRAUD_NUM_FEATURES = 8
# Payloads and outputs of more than this many bytes go through Ray's object store by reference
# rather than inside the scheduler's messages. Ray itself puts objects over 100 KiB in the
# object store (``max_direct_call_object_size``); below that a copy is cheaper than a ref's
# bookkeeping, and 64 KiB keeps a long prompt (about 16k tokens) out of the scheduler.
INLINE_PAYLOAD_BYTES = 64 * 1024
# The error of a Completion for a task its worker was asked to drop (``abort``). An LLM
# worker's such report carries the ids of the tokens generated so far as its output (a list;
# empty from a simulated engine), and its attempt's count.
ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class ByRef:
    """A payload or output left in Ray's object store: ``ref`` is its Ray object ref and
    ``size_bytes`` its size. Whoever needs the value fetches it; whoever passes it on (the
    scheduler) copies only the ref. With ``index``, the ref holds a list of outputs and the
    value is its item ``index``; a worker reports such an output with ``ref=None`` and sends
    the list as the next message of its stream (``split_outputs``)."""

    ref: Any
    size_bytes: int
    index: int | None = None


@dataclass(frozen=True, slots=True)
class PickledOutput:
    """A callable's output as its worker pickled it (cloudpickle), in ``data``.

    A user's callable may return anything. Pickled on its own, an output that cannot be pickled
    fails its own task at the worker, and one that cannot be unpickled where the driver runs (a
    class of a package only the cluster has) fails its own task at the driver: not the batch,
    the scheduler's call or the driver's poll that carries it with others."""

    data: bytes


@dataclass(frozen=True, slots=True)
class WorkPayload:
    """What a worker needs to run one task: a prompt and its token budget (LLM pools), a
    feature vector (the fraud classifier), or a Python callable with its arguments. ``fn``
    is the callable pickled by the driver (``bytes``, see ``Payload.to_work``), or a callable
    as it is. ``pickled_args``: the callable's ``(args, kwargs)`` pickled by the driver, in
    place of ``args`` and ``kwargs``: the scheduler and its task log then carry bytes and never
    rebuild a user's objects, so an argument that only the worker can unpickle (a class of a
    package only the cluster has), or whose unpickling raises, fails its own task there
    (``actors.cpu_actor.load_arguments``)."""

    prompt: str | None = None
    max_new_tokens: int | None = None
    features: list[float] | None = None
    fn: Any = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    pickled_args: bytes | None = None

    def size_bytes(self) -> int:
        """A cheap lower bound of the pickled size: the prompt's characters, 8 bytes per
        feature, the pickled callable and arguments, and plain arguments where
        ``value_size_bytes`` knows their size."""
        return (len(self.prompt or "") + 8 * len(self.features or ())
                + (len(self.fn) if isinstance(self.fn, bytes) else 0)
                + len(self.pickled_args or b"")
                + sum(map(value_size_bytes, self.args))
                + sum(map(value_size_bytes, self.kwargs.values())))

    def to_wire(self) -> tuple[Any, ...]:
        """The fields as a plain tuple, in order (``WorkPayload(*t)`` rebuilds it)."""
        return (self.prompt, self.max_new_tokens, self.features, self.fn, self.args, self.kwargs,
                self.pickled_args)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A validated task as a driver sends it to the scheduler.

    The deadline is ``deadline_s`` (absolute, the scheduler's clock) or ``sla_s`` (relative to
    arrival at the scheduler); neither for a best-effort task without one. ``payload`` is a
    ``WorkPayload`` or a ``ByRef`` to one.
    """

    task_id: str
    kind: str
    priority: int
    pool: str
    payload: Any
    deadline_s: float | None = None
    sla_s: float | None = None
    best_effort: bool = False
    num_prompt_tokens: int = 0
    max_new_tokens: int = 0
    min_context_tokens: int = 0
    tenant: str = "default"
    # Other pools that may run it, after ``pool``, in order of preference.
    alternatives: tuple[str, ...] = ()
    num_gpus: float = 0.0  # GPUs it needs on its worker (``requirements.num_gpus``)

    def to_wire(self) -> tuple[Any, ...]:
        """This record as a plain tuple, as it crosses between a driver and the scheduler."""
        p = self.payload
        return (self.task_id, self.kind, self.priority, self.pool,
                p.to_wire() if isinstance(p, WorkPayload) else p, self.deadline_s, self.sla_s,
                self.best_effort, self.num_prompt_tokens, self.max_new_tokens,
                self.min_context_tokens, self.tenant, self.alternatives, self.num_gpus)

    @classmethod
    def from_wire(cls, t: tuple[Any, ...]) -> TaskRecord:
        p = t[4]
        return cls(t[0], t[1], t[2], t[3], WorkPayload(*p) if isinstance(p, tuple) else p,
                   *t[5:])

    def to_core(self, now_s: float) -> CoreTask:
        """The core's view of this task, its deadline made absolute at ``now_s``."""
        if self.deadline_s is not None:
            deadline_s = self.deadline_s
        elif self.sla_s is not None:
            deadline_s = now_s + self.sla_s
        else:
            deadline_s = math.inf
        return CoreTask(task_id=self.task_id, kind=self.kind, priority=Priority(self.priority),
                        deadline_s=deadline_s, pool=self.pool,
                        num_prompt_tokens=self.num_prompt_tokens,
                        max_new_tokens=self.max_new_tokens, best_effort=self.best_effort,
                        min_context_tokens=self.min_context_tokens, tenant=self.tenant,
                        alternatives=self.alternatives)


@dataclass(frozen=True, slots=True)
class ResultRecord:
    """How one task ended, as the scheduler sends it to the driver (which builds a ``Result``
    of the same fields). ``output`` may be a ``ByRef`` the driver fetches; times are
    seconds: ``queue_s`` from arrival to start, ``service_s`` from start to end, ``total_s``
    from arrival to end."""

    task_id: str
    status: Status
    output: Any = None
    reason: str = ""
    worker_id: str = ""
    kind: str = ""
    priority: int = int(Priority.MEDIUM)
    pool: str = ""
    queue_s: float = 0.0
    service_s: float = 0.0
    total_s: float = 0.0
    deadline_met: bool = False
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.status is Status.COMPLETED

    def to_wire(self) -> tuple[Any, ...]:
        """This record as a plain tuple, as it crosses between a driver and the scheduler."""
        return (self.task_id, self.status.value, self.output, self.reason, self.worker_id,
                self.kind, self.priority, self.pool, self.queue_s, self.service_s, self.total_s,
                self.deadline_met, self.attempts)

    @classmethod
    def from_wire(cls, t: tuple[Any, ...]) -> ResultRecord:
        return cls(t[0], Status(t[1]), *t[2:])


# Not frozen, as ``types.Assignment``: one is built per task, and a frozen dataclass of this
# many fields (each set through object.__setattr__) costs about a microsecond more. Treat it
# as a value.
@dataclass(slots=True)
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

    def to_wire(self) -> tuple[Any, ...]:
        """The fields as a plain tuple, in order (``Completion(*t)`` rebuilds it)."""
        return tuple(getattr(self, name) for name in self.__slots__)


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A task as it travels to a worker: the core's view plus the payload to run (a
    ``WorkPayload``, or a ``ByRef`` to one that the worker fetches)."""

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
    # What earlier attempts generated before the task was taken back from their workers
    # (preempted): (token ids, tokens; no ids from a simulated engine). An LLM worker whose
    # engine ``resumes`` goes on from there, as vLLM's recompute preemption does: it prefills
    # the prompt followed by those tokens, generates what is left of the budget, and decodes
    # them all as its output.
    progress: tuple[tuple[int, ...], int] | None = None
    # When the scheduler made this item (its clock): a request to drop the task applies to
    # the items made before the request, not to a later attempt, nor to a later task given
    # the same id (``CPUActor.abort``).
    sent_s: float = 0.0

    def to_wire(self) -> tuple[Any, ...]:
        """This item as a plain tuple, as the scheduler sends it in a plain call."""
        p = self.payload
        return (self.task_id, self.kind, self.priority, self.deadline_s,
                p.to_wire() if isinstance(p, WorkPayload) else p, self.latest_start_s,
                self.binding, self.progress, self.sent_s)

    @classmethod
    def from_wire(cls, t: tuple[Any, ...]) -> WorkItem:
        p = t[4]
        return cls(t[0], t[1], t[2], t[3], WorkPayload(*p) if isinstance(p, tuple) else p,
                   t[5], t[6], t[7], t[8])


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


def describe_error(exc: BaseException, limit: int = 500) -> str:
    """``"Type: message"`` (the message cut at ``limit`` characters) for an exception a user's
    code raised. Its message is user code too and may raise in turn (a faulty ``__str__``): then
    it is the type and what building the message raised, so that reporting one task's failure
    cannot fail the call, or the thread, that carries others."""
    name = type(exc).__name__
    try:
        return f"{name}: {str(exc)[:limit]}"
    except BaseException as inner:  # noqa: BLE001 - whatever the message raises
        return f"{name} (its message could not be built: {type(inner).__name__})"


def value_size_bytes(value: Any) -> int:
    """The size of a value where it is cheap to know: text, bytes and a pickled output by their
    length, arrays by ``nbytes``; 0 for anything else (sent inline, whatever its size)."""
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if isinstance(value, PickledOutput):
        return len(value.data)
    nbytes = getattr(value, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else 0


def split_outputs(completions: list[Completion]) -> tuple[list[Completion], list[Any]]:
    """``completions`` with each output of more than ``INLINE_PAYLOAD_BYTES`` taken out, and
    the outputs taken: the worker sends the list as an object of its own, which its caller
    owns and passes on by reference; each completion keeps ``ByRef(None, size, index)``."""
    big: list[Any] = []
    out = completions
    for i, c in enumerate(completions):
        size = value_size_bytes(c.output) if c.output is not None else 0
        if size > INLINE_PAYLOAD_BYTES:
            if out is completions:
                out = list(completions)
            out[i] = replace(c, output=ByRef(None, size, len(big)))
            big.append(c.output)
    return out, big
