"""The user-facing models: what drivers hand in (``Task``) and get back (``Result``).

Validation happens here, at the edge: a bad task raises ``pydantic.ValidationError`` naming the
field and never reaches the scheduler's queue.
"""

from __future__ import annotations

import io
import math
import re
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import cloudpickle  # type: ignore[import-untyped]
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from raysched.core.protocol import (
    FRAUD_NUM_FEATURES,
    ResultRecord,
    TaskRecord,
    WorkPayload,
    describe_error,
)
from raysched.core.types import CHARS_PER_TOKEN, CoreTask, Priority, Status

# Limits that keep one request from exhausting the scheduler's memory or a worker's context.
MAX_PROMPT_CHARS = 256 * 1024
MAX_NEW_TOKENS = 32_768
MAX_FEATURES = 4096
MAX_SLA_MS = 7 * 24 * 3600 * 1000.0

# What each default pool runs; a scheduler with other pools passes its own in the validation
# context (``{"pools": {name: kind}}``).
DEFAULT_POOL_KINDS = {"cpu": "cpu", "llm-7b": "llm", "llm-70b": "llm"}
DEFAULT_POOL_BY_KIND = {
    "classification": "cpu",
    "summarization": "llm-7b",
    "reasoning": "llm-70b",
    "agent": "llm-7b",
}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def _priority(value: Any) -> Any:
    """Accept 1..4, "CRITICAL".."LOW" (any case) or a Priority."""
    if isinstance(value, str) and not value.strip().isdigit():
        try:
            return Priority[value.strip().upper()]
        except KeyError:
            names = ", ".join(p.name for p in Priority)
            raise ValueError(f"unknown priority {value!r}; use one of {names} or 1-4") from None
    if isinstance(value, str):
        value = int(value)
    if isinstance(value, bool):
        raise ValueError("priority must be a class name or 1-4, not a boolean")
    return value


PriorityField = Annotated[Priority, BeforeValidator(_priority)]


def _not_a_boolean(value: Any) -> Any:
    """A number as given; a boolean refused (pydantic would take True as 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


# A number field that refuses booleans.
NoBool = BeforeValidator(_not_a_boolean)


def _pickle_callable(fn: Callable[..., Any]) -> bytes:
    """``fn`` pickled for the workers; ``TypeError`` naming the field if it cannot be."""
    try:
        blob: bytes = cloudpickle.dumps(fn)
    except Exception as exc:  # noqa: BLE001 - pickling raises many kinds; each means the same
        raise TypeError(f"payload.fn {fn!r} cannot be pickled for the workers: "
                        f"{describe_error(exc)}") from exc
    return blob


class _RefInside(Exception):
    """The arguments being pickled hold a Ray object ref."""


class _ArgumentPickler(cloudpickle.CloudPickler):  # type: ignore[misc]
    """cloudpickle's pickler, stopped by the first Ray object ref met anywhere in what it
    pickles (in a list, a dict, an object's attributes): pickled out of band, a ref pins its
    object for the driver's life, where Ray's own serialization counts it."""

    def __init__(self, file: io.BytesIO, object_ref: type | None) -> None:
        super().__init__(file, protocol=cloudpickle.DEFAULT_PROTOCOL)
        self._object_ref = object_ref

    def reducer_override(self, obj: Any) -> Any:
        if self._object_ref is not None and isinstance(obj, self._object_ref):
            raise _RefInside
        return super().reducer_override(obj)


def _pickle_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes | None:
    """A callable's ``(args, kwargs)`` pickled for its worker (``WorkPayload.pickled_args``);
    None when they hold a Ray object ref anywhere inside them, so they travel as they are,
    through Ray's own serialization (no ref exists unless Ray is imported). ``TypeError``
    naming the fields if they cannot be pickled."""
    ray = sys.modules.get("ray")
    buffer = io.BytesIO()
    try:
        _ArgumentPickler(buffer, getattr(ray, "ObjectRef", None)).dump((args, kwargs))
    except _RefInside:
        return None
    except Exception as exc:  # noqa: BLE001 - pickling raises many kinds; each means the same
        raise TypeError(f"payload.args or payload.kwargs cannot be pickled for the workers: "
                        f"{describe_error(exc)}") from exc
    return buffer.getvalue()


class Payload(BaseModel):
    """What the worker needs to run the task.

    LLM kinds take ``prompt`` and ``max_new_tokens``; ``classification`` takes ``features``; any
    kind on the ``cpu`` pool may instead carry a Python callable ``fn`` with ``args``/``kwargs``
    (pickled by the driver: only trusted drivers can connect, see the README's trust model).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    max_new_tokens: Annotated[int | None, NoBool] = Field(default=None, gt=0, le=MAX_NEW_TOKENS)
    features: list[Annotated[float, NoBool]] | None = Field(default=None, min_length=1,
                                                            max_length=MAX_FEATURES)
    fn: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("prompt must not be empty")
        return v

    @field_validator("features")
    @classmethod
    def _finite(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and not all(math.isfinite(x) for x in v):
            raise ValueError("features must be finite numbers (no NaN or infinity)")
        return v

    def to_work(self, pickled: dict[int, bytes] | None = None) -> WorkPayload:
        """The plain record of this payload that workers run. A callable is pickled here, once:
        the scheduler, its task log and Ray then copy bytes, and the worker unpickles them (see
        ``actors.cpu_actor.load_callable``), where each hop would otherwise pickle it again
        (a function defined in a driver's script travels by value, at tens of µs a time).
        Its arguments are pickled here too, on their own (``WorkPayload.pickled_args``), so
        the scheduler never rebuilds a user's objects: one that only the worker can unpickle
        fails its own task there instead of the scheduler's call that carries it. Arguments
        that hold a Ray object ref anywhere inside them (``_pickle_arguments``) go as they are.

        ``pickled``: callables already pickled in the same submit call, by ``id``, so a batch
        of tasks that call one function pickles it once, as one Ray call carrying them all
        would; the function is taken as it is at that call."""
        fn = call_args = None
        if self.fn is not None:
            pickled = {} if pickled is None else pickled
            if (fn := pickled.get(id(self.fn))) is None:
                fn = pickled[id(self.fn)] = _pickle_callable(self.fn)
            if self.args or self.kwargs:
                call_args = _pickle_arguments(self.args, self.kwargs)
        if call_args is None:
            return WorkPayload(self.prompt, self.max_new_tokens, self.features, fn, self.args,
                               self.kwargs)
        return WorkPayload(self.prompt, self.max_new_tokens, self.features, fn,
                           pickled_args=call_args)


class Requirements(BaseModel):
    """Where the task may run. ``pool`` defaults from the task's kind; ``pools`` instead lists
    every pool that may run it, in order of preference (the cheaper first): the scheduler
    takes the first predicted to meet the deadline with room to spare, else the one predicted
    to finish first."""

    model_config = ConfigDict(extra="forbid")

    pool: str | None = None
    pools: list[str] | None = Field(default=None, min_length=1, max_length=8)
    num_gpus: Annotated[float, NoBool] = Field(default=0.0, ge=0, le=64)
    context_tokens: Annotated[int | None, NoBool] = Field(default=None, gt=0, le=1_048_576)


class Task(BaseModel):
    """One unit of work with a priority class and a deadline.

    Give the deadline as ``sla_ms`` (relative to arrival at the scheduler) or ``deadline_s``
    (absolute, seconds since the epoch on the scheduler's clock). A ``best_effort`` task may
    omit it, and one whose deadline cannot be met is still run rather than rejected.

    >>> Task(kind="summarization", priority="HIGH", sla_ms=800,
    ...      payload={"prompt": "Summarise: ...", "max_new_tokens": 64})  # doctest: +ELLIPSIS
    Task(id=...)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    kind: str = Field(min_length=1, max_length=64)
    priority: PriorityField = Priority.MEDIUM
    sla_ms: Annotated[float | None, NoBool] = Field(default=None, gt=0, le=MAX_SLA_MS,
                                                    allow_inf_nan=False)
    deadline_s: Annotated[float | None, NoBool] = Field(default=None, gt=0, allow_inf_nan=False)
    best_effort: bool = False
    payload: Payload = Field(default_factory=Payload)
    requirements: Requirements = Field(default_factory=Requirements)
    tenant: str = Field(default="default", min_length=1, max_length=64)

    @field_validator("kind")
    @classmethod
    def _kind_name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError("kind must start with a letter and use letters, digits, '_', '-', '.'")
        return v

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Task:
        if self.sla_ms is not None and self.deadline_s is not None:
            raise ValueError("give the deadline as sla_ms or deadline_s, not both")
        if self.sla_ms is None and self.deadline_s is None and not self.best_effort:
            raise ValueError("a deadline is required: set sla_ms or deadline_s "
                             "(or best_effort=True)")
        r = self.requirements
        if r.pools is not None:
            if r.pool is not None:
                raise ValueError("give requirements.pool or requirements.pools, not both")
            if len(set(r.pools)) != len(r.pools):
                raise ValueError(f"requirements.pools names a pool twice: {r.pools}")
        known = (info.context or {}).get("pools") if info is not None else None
        for pool in self.pools:
            self._check_pool(pool, known)
        kinds = known if isinstance(known, Mapping) else DEFAULT_POOL_KINDS
        p = self.payload
        if ((p.fn is not None or p.features is not None)
                and all(kinds.get(pool) == "llm" for pool in self.pools)):
            given = "payload.fn" if p.fn is not None else "payload.features"
            raise ValueError(f"{given} would never run: {', '.join(self.pools)} "
                             f"{'is an LLM pool' if len(self.pools) == 1 else 'are LLM pools'}, "
                             f"which generate from payload.prompt")
        return self

    def _check_pool(self, pool: str, known: Any) -> None:
        """That ``pool`` is a pool (of the scheduler's, when ``known`` lists them) whose kind
        can run this task's payload."""
        field_name = "requirements.pools" if self.requirements.pools else "requirements.pool"
        if not _NAME.fullmatch(pool):
            raise ValueError(f"{field_name} {pool!r} is not a pool name")
        if known is not None and pool not in known:
            raise ValueError(f"{field_name}: unknown pool {pool!r}; known: {sorted(known)}")
        # The pool's kind decides what the payload must carry: the scheduler's pools when the
        # caller knows them (a mapping name -> kind), else the default pools' kinds.
        kinds = known if isinstance(known, Mapping) else DEFAULT_POOL_KINDS
        pool_kind = kinds.get(pool)
        p = self.payload
        if pool_kind is None:
            # A pool this check does not know (no context, not a default pool): what its
            # payload needs is checked where its kind is known, against the scheduler's pools.
            return
        if pool_kind == "llm":
            if p.prompt is None:
                raise ValueError(f"payload.prompt is required for {self.kind} on {pool}")
            if p.max_new_tokens is None:
                raise ValueError(f"payload.max_new_tokens is required for {self.kind} on {pool}")
        elif self.kind == "classification" and p.features is None and p.fn is None:
            raise ValueError("payload.features is required for classification")
        elif self.kind == "classification" and p.fn is None and p.features is not None:
            if len(p.features) != FRAUD_NUM_FEATURES:
                raise ValueError(f"payload.features: the {pool} pool's classifier takes "
                                 f"{FRAUD_NUM_FEATURES} features, got {len(p.features)}")
        elif self.kind != "classification" and p.fn is None:
            hint = ("; a kind without a default pool runs on cpu: name an LLM pool in "
                    "requirements.pool to generate text" if self.requirements.pool is None
                    and self.requirements.pools is None else "")
            raise ValueError(f"payload.fn (a callable) is required for kind {self.kind!r} "
                             f"on {pool}{hint}")

    @property
    def pool(self) -> str:
        """The pool it runs on, or the first it may run on (see ``pools``)."""
        return self.pools[0]

    @property
    def pools(self) -> tuple[str, ...]:
        """Every pool that may run it, in order of preference."""
        r = self.requirements
        if r.pools is not None:
            return tuple(r.pools)
        if r.pool is not None:
            return (r.pool,)
        return (DEFAULT_POOL_BY_KIND.get(self.kind, "cpu"),)

    @property
    def num_prompt_tokens(self) -> int:
        prompt = self.payload.prompt
        return math.ceil(len(prompt) / CHARS_PER_TOKEN) if prompt else 0

    def to_record(self, pickled: dict[int, bytes] | None = None) -> TaskRecord:
        """This task as it is sent to the scheduler: a plain record, not validated again.
        ``pickled``: as ``Payload.to_work``'s. Raises ``TypeError`` for a callable that
        cannot be pickled."""
        return self._record(self.payload.to_work(pickled))

    def to_core(self, now_s: float) -> CoreTask:
        """The scheduler's view of this task, with the deadline made absolute at ``now_s``
        (its payload, the callable's pickle included, is not needed for it)."""
        return self._record(None).to_core(now_s)

    def _record(self, payload: WorkPayload | None) -> TaskRecord:
        return TaskRecord(task_id=self.id, kind=self.kind, priority=int(self.priority),
                          pool=self.pool, payload=payload,
                          deadline_s=self.deadline_s,
                          sla_s=None if self.sla_ms is None else self.sla_ms / 1e3,
                          best_effort=self.best_effort,
                          num_prompt_tokens=self.num_prompt_tokens,
                          max_new_tokens=self.payload.max_new_tokens or 0,
                          min_context_tokens=self.requirements.context_tokens or 0,
                          tenant=self.tenant, alternatives=self.pools[1:],
                          num_gpus=self.requirements.num_gpus)


class Result(BaseModel):
    """How one task ended. ``reason`` says why on every status but ``completed``."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    task_id: str
    status: Status
    output: Any = None
    reason: str = ""
    worker_id: str = ""
    kind: str = ""
    priority: Priority = Priority.MEDIUM
    pool: str = ""
    queue_s: float = 0.0
    service_s: float = 0.0
    total_s: float = 0.0
    deadline_met: bool = False
    attempts: int = 0

    @model_validator(mode="after")
    def _reason_when_not_completed(self) -> Result:
        if self.status is not Status.COMPLETED and not self.reason:
            raise ValueError(f"a {self.status.value} result needs a reason")
        return self

    @property
    def ok(self) -> bool:
        return self.status is Status.COMPLETED

    @classmethod
    def from_record(cls, r: ResultRecord, output: Any) -> Result:
        """The Result of a scheduler's record, with ``output`` for the record's (the driver's
        copy of it: fetched where it went by reference, unpickled where it was pickled). Not
        validated again: the scheduler built the record from validated parts."""
        return cls.model_construct(
            task_id=r.task_id, status=Status(r.status), output=output, reason=r.reason,
            worker_id=r.worker_id, kind=r.kind, priority=Priority(r.priority), pool=r.pool,
            queue_s=r.queue_s, service_s=r.service_s, total_s=r.total_s,
            deadline_met=r.deadline_met, attempts=r.attempts)
