"""The driver side: connect to (or start) a scheduler, submit tasks, collect results.

One background thread per client long-polls the scheduler for finished results, many per call,
and resolves the handles; handles work from plain code (``.result()``) and from asyncio
(``await handle``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import cloudpickle  # type: ignore[import-untyped]

from raysched.config import SchedulerConfig, default_config
from raysched.core.protocol import (
    ABORTED,
    INLINE_PAYLOAD_BYTES,
    ByRef,
    Completion,
    PickledOutput,
    ResultRecord,
    TaskRecord,
    WorkItem,
    describe_error,
)
from raysched.core.scheduler import expired_at_worker, latest_start_s
from raysched.core.types import Status
from raysched.errors import (
    BackpressureError,
    ClientClosedError,
    SchedulerNotFoundError,
    SubmitError,
    TaskTimeoutError,
)
from raysched.express import EXPRESS_CLASSES, ExpressLeases, Lease
from raysched.models import DEFAULT_POOL_KINDS, Result, Task

if TYPE_CHECKING:
    from raysched.shards import ShardedClient

log = logging.getLogger(__name__)

SUBMIT_CHUNK = 512
POLL_TIMEOUT_S = 0.5
# How long ``Client.run``'s call waits in the scheduler for the task to end, so its Result comes
# in the call's own answer; a task that takes longer gets its Result as a submitted one does.
# Short, as the call holds one of the scheduler's concurrent calls while it waits.
RUN_WAIT_S = 1.0
# How long ``Client.close`` waits for the scheduler to cancel the client's unfinished tasks and
# hand over the results it holds for it.
CLOSE_WAIT_S = 5.0
# How long a cancel (or ``close``) waits for the workers of express tasks to note that they are
# not to start them.
CANCEL_WAIT_S = 5.0


class TaskHandle:
    """A submitted task's future result. ``await handle`` works inside asyncio."""

    def __init__(self, client: Client, task_id: str) -> None:
        self._client = client
        self.task_id = task_id
        self.resolved_at: float | None = None  # time.monotonic() when the Result arrived
        self._future: concurrent.futures.Future[Result] = concurrent.futures.Future()

    def result(self, timeout: float | None = None) -> Result:
        """The task's Result; raises ``TaskTimeoutError`` if not ready within ``timeout`` s."""
        try:
            return self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TaskTimeoutError(f"task {self.task_id} has no result after {timeout} s") from None

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> bool:
        """Ask the scheduler to cancel; True when this call ended the task."""
        return self._client.cancel([self.task_id])[0]

    def __await__(self) -> Any:
        return asyncio.wrap_future(self._future).__await__()

    def _set(self, result: Result) -> None:
        if not self._future.done():
            self.resolved_at = time.monotonic()
            self._future.set_result(result)


@dataclass(frozen=True, slots=True)
class _OnExpress:
    """An express task on its way: the lease it went under, its record (deadline made
    absolute), when it was sent (``time.time()``) and its handle."""

    lease: Lease
    record: TaskRecord
    submit_s: float
    handle: TaskHandle


class Client:
    """A driver's connection to one scheduler actor."""

    def __init__(self, actor: Any, owns_ray: bool, max_outstanding: int = 100_000,
                 name: str = "raysched-scheduler", namespace: str = "raysched",
                 reconnect_s: float = 60.0, owns_actor: bool | None = None,
                 express: bool = True) -> None:
        self.actor = actor
        # An embedded scheduler lives as long as the handle that created it (it is not
        # detached): the client keeps that handle for the scheduler's whole life.
        self._owns_actor = owns_ray if owns_actor is None else owns_actor
        self.name, self.namespace = name, namespace
        self.reconnect_s = reconnect_s
        self.max_outstanding = max_outstanding
        self.client_id = uuid.uuid4().hex
        self._owns_ray = owns_ray
        stats = self._get(actor.stats.remote())
        # Pool name -> kind ("cpu" or "llm"): the validation context of every task.
        self.pools: dict[str, str] = {name: p["kind"] for name, p in stats["pool_config"].items()}
        self.notes: list[str] = stats["notes"] + _waiting_pools(stats)
        self._handles: dict[str, TaskHandle] = {}
        # Ids of Results received and not yet acknowledged to the scheduler (sent with the
        # next poll), and those the poll now on its way carries.
        self._acks: list[str] = []
        self._acks_in_flight: frozenset[str] = frozenset()
        # Unfinished tasks whose payloads went by reference: sent again to a restarted
        # scheduler, whose task log keeps no object refs. The refs keep the payloads alive.
        self._by_ref: dict[str, TaskRecord] = {}
        self._lock = threading.Lock()
        self.duplicates_dropped = 0
        self._room = threading.Condition(self._lock)
        self._calls = 0  # calls to the scheduler on their way, from any thread (``close``)
        self._poller: threading.Thread | None = None
        self._closed = threading.Event()
        # The express lane (``raysched.express``): leases, and the tasks now on it.
        self.express = express
        self._express = ExpressLeases(lambda: self.actor, self.client_id)
        self._on_express: dict[str, _OnExpress] = {}
        # Express tasks lost with their workers and sent to the scheduler: the attempt each
        # may have made counts in its Result.
        self._extra_attempts: dict[str, int] = {}

    # -- submitting --------------------------------------------------------------------------

    def validate(self, task: Task | Mapping[str, Any]) -> Task:
        """A ``Task`` checked against this scheduler's pools (raises ``ValidationError``).

        A ``Task`` built without a context was already checked against the default pools'
        kinds; when its pools exist here with those same kinds, every check has been made and
        it is taken as it is (validated once, at the edge). Otherwise it is checked again.
        """
        if isinstance(task, Task):
            if all(self.pools.get(p) == DEFAULT_POOL_KINDS.get(p, "") for p in task.pools):
                return task
            return Task.model_validate(task.model_dump(), context={"pools": self.pools})
        return Task.model_validate(task, context={"pools": self.pools})

    def submit(self, task: Task | Mapping[str, Any], *, block: bool = True,
               timeout: float | None = None) -> TaskHandle:
        """Submit one task; returns its handle at once (see ``submit_many`` for backpressure)."""
        return self.submit_many([task], block=block, timeout=timeout)[0]

    def run(self, task: Task | Mapping[str, Any], timeout: float | None = None) -> Result:
        """Submit one task and wait for its Result: ``submit(task).result(timeout)`` in one
        scheduler call where the task ends within ``RUN_WAIT_S`` (the call's answer carries
        the Result, with no poll in between), else the Result comes as a submitted task's
        does. A CRITICAL or HIGH task for a CPU pool takes the express lane when this client
        holds a lease there (``raysched.express``): straight to the leased worker, one round
        trip. Raises as ``submit`` does, and ``TaskTimeoutError`` after ``timeout`` seconds
        without a Result (the task goes on)."""
        checked = self.validate(task)
        if self.express:
            result = self._run_express(checked, timeout)
            if result is not None:
                return result
        if timeout is None:
            return self._submit_checked([checked], True, None, RUN_WAIT_S)[0].result()
        end_s = time.monotonic() + timeout
        handle = self._submit_checked([checked], True, timeout,
                                      max(0.0, min(timeout, RUN_WAIT_S)))[0]
        return handle.result(max(0.0, end_s - time.monotonic()))

    def submit_many(self, tasks: Iterable[Task | Mapping[str, Any]], *, block: bool = True,
                    timeout: float | None = None) -> list[TaskHandle]:
        """Submit tasks in batches of ``SUBMIT_CHUNK`` per scheduler call.

        Every task is validated before any is sent, so a bad task in the list submits nothing.
        A payload of more than ``INLINE_PAYLOAD_BYTES`` (a long prompt) is put in Ray's object
        store once, here; the scheduler passes its ref to the worker.

        Backpressure: a client holds at most ``max_outstanding`` unfinished tasks. Past that,
        ``block=True`` waits up to ``timeout`` seconds (None: as long as it takes) for results
        to make room, and ``block=False`` does not wait; either way ``BackpressureError`` says
        so when there is no room, and nothing of this call is submitted.
        """
        return self._submit(tasks, block, timeout)

    def _submit(self, tasks: Iterable[Task | Mapping[str, Any]], block: bool,
                timeout: float | None, wait_s: float = 0.0) -> list[TaskHandle]:
        """``submit_many``; with ``wait_s`` (one task), by the scheduler's ``run`` call, which
        waits up to that long for the task to end and answers with its Result."""
        return self._submit_checked([self.validate(t) for t in tasks], block, timeout, wait_s)

    def _submit_checked(self, checked: list[Task], block: bool, timeout: float | None,
                        wait_s: float = 0.0) -> list[TaskHandle]:
        handles = self._register(checked, block, timeout)
        try:
            # Large payloads go to the object store only once the call is sure to be sent.
            pickled: dict[int, bytes] = {}  # one pickle per callable in this call
            records = [self._to_record(t, pickled) for t in checked]
        except BaseException:
            self._forget([t.id for t in checked])
            raise
        self._send(records, handles, wait_s)
        return handles

    def _register(self, checked: list[Task], block: bool, timeout: float | None
                  ) -> list[TaskHandle]:
        """Handles for ``checked`` (validated tasks), within ``max_outstanding`` (waiting for
        room as ``submit_many`` says); ``ValueError`` for an id given twice or still
        unfinished here."""
        self._check_usable()  # before a large payload's ray.put, which would start a Ray
        if len(checked) > self.max_outstanding:
            raise BackpressureError(f"{len(checked)} tasks in one call exceed max_outstanding="
                                    f"{self.max_outstanding}; submit them in smaller parts")
        ids = [t.id for t in checked]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"task ids given twice in one call: {twice[:5]}; nothing submitted")
        handles = [TaskHandle(self, t.id) for t in checked]
        with self._room:
            room = self._room.wait_for(
                lambda: len(self._handles) + len(handles) <= self.max_outstanding,
                timeout=timeout if block else 0)
            if not room:
                raise BackpressureError(f"{len(self._handles)} tasks of this client are still "
                                        f"unfinished (max_outstanding={self.max_outstanding})")
            known = [h.task_id for h in handles if h.task_id in self._handles]
            if known:
                raise ValueError(f"task id {known[0]!r} is already submitted by this client and "
                                 f"has no result yet; nothing submitted")
            for h in handles:
                self._handles[h.task_id] = h
            # An id submitted again whose earlier Result this client received: that Result is
            # acknowledged before the new task goes, or the scheduler, which still owes it,
            # would answer the new task with it (as it answers a call repeated after a lost
            # reply); and a later acknowledgement must not acknowledge the new one.
            received: list[str] = []
            if self._acks or self._acks_in_flight:
                again = set(ids)
                received = sorted(again.intersection(self._acks) | again & self._acks_in_flight)
                self._acks = [a for a in self._acks if a not in again]
        if received:
            try:
                self._call("ack", self.client_id, received)
            except BaseException:
                self._forget(ids)
                raise
        return handles

    def _send(self, records: list[TaskRecord], handles: list[TaskHandle], wait_s: float = 0.0
              ) -> None:
        """Send registered tasks to the scheduler, ``SUBMIT_CHUNK`` per call (with ``wait_s``,
        one task by its ``run`` call), and deliver the refusals and Results the answers carry.
        ``SubmitError`` when a call fails: the tasks from there on were not submitted."""
        self._ensure_poller()
        for i in range(0, len(records), SUBMIT_CHUNK):
            chunk = records[i:i + SUBMIT_CHUNK]
            try:
                if wait_s and len(records) == 1:
                    replies = [self._call("run", self.client_id, chunk[0].to_wire(), wait_s)]
                else:
                    replies = self._call("submit", self.client_id, [r.to_wire() for r in chunk])
            except Exception as exc:
                # Nothing from here on reached the scheduler: forget those handles, so no task
                # is left waiting for a Result that cannot come, and say what was sent.
                self._forget([r.task_id for r in records[i:]])
                raise SubmitError(f"{len(records) - i} of {len(records)} tasks were not "
                                  f"submitted: {type(exc).__name__}: {str(exc)[:500]}",
                                  submitted=handles[:i]) from exc
            # In the scheduler now: a restarted one gets these payloads from here again.
            with self._lock:
                self._by_ref.update((r.task_id, r) for r in chunk if isinstance(r.payload, ByRef))
            self._deliver_replies(replies)

    def _run_express(self, task: Task, timeout: float | None) -> Result | None:
        """``run`` by the express lane (``raysched.express``): straight to the worker this
        client holds a lease on, when the task takes the lane (CRITICAL or HIGH, one CPU
        pool, no GPU asked, an inline payload, a kind the lease has estimates for), no other
        task of this client is on that lease now, and the task can meet its deadline there by
        the scheduler's own estimates. None when it does not take it: the caller runs it through
        the scheduler, which also refuses, with its reason, what cannot meet its deadline. A
        task the worker refuses unrun (the lease ended) or loses goes to the scheduler from
        here, its deadline as it was.

        The caller waits on the task's handle, not in Ray: ``close`` or ``cancel`` from
        another thread ends it at once."""
        if (task.priority not in EXPRESS_CLASSES or len(task.pools) != 1
                or self.pools.get(task.pool) != "cpu" or task.requirements.num_gpus):
            return None  # a task that asks for GPUs has the scheduler check its pool's
        self._check_usable()
        lease = self._express.take(task.pool, task.kind)
        if lease is None:
            return None
        try:
            express = self._express_call(task, lease, timeout)
        except BaseException:
            self._express.give_back(task.pool, lease)
            raise
        if express is None:
            self._express.give_back(task.pool, lease)
            return None
        end_s = None if timeout is None else time.monotonic() + timeout
        return express.handle.result(None if end_s is None else max(0.0, end_s - time.monotonic()))

    def _express_call(self, task: Task, lease: Lease, timeout: float | None
                      ) -> _OnExpress | None:
        """Register ``task`` and send it under ``lease``; None (nothing registered) when it
        does not take the lane after all: a large payload, too little slack."""
        record = task.to_record()
        if record.payload.size_bytes() > INLINE_PAYLOAD_BYTES:
            return None
        cases = lease.cases[task.kind]
        submit_s = time.time()
        deadline_s = record.to_core(submit_s).deadline_s
        latest_s = float("inf")
        if not task.best_effort:
            if deadline_s - submit_s < cases[0]:
                return None
            latest_s = latest_start_s(deadline_s, cases)
        # Its deadline fixed now: time spent here counts if it goes to the scheduler after all.
        record = replace(record, sla_s=None,
                         deadline_s=deadline_s if deadline_s != float("inf") else None)
        handle = self._register([task], True, timeout)[0]
        express = _OnExpress(lease, record, submit_s, handle)
        with self._lock:
            self._on_express[task.id] = express
        item = WorkItem(task.id, task.kind, int(task.priority), deadline_s, record.payload,
                        latest_s, sent_s=submit_s).to_wire()
        try:
            self._ensure_poller()
            ref = lease.worker.express.remote(lease.lease_id, item)
        except BaseException:  # not sent: nothing of it is left behind
            with self._lock:
                self._on_express.pop(task.id, None)
            self._forget([task.id])
            raise
        ref.future().add_done_callback(lambda answer: self._express_answer(express, answer))
        return express

    def _express_answer(self, express: _OnExpress, answer: concurrent.futures.Future[Any]
                        ) -> None:
        """The worker's answer to an express task (``Completion.to_wire``), on Ray's callback
        thread: resolve its handle, unless a cancel or ``close`` ended it first (they report
        it then); without a completion (the lease ended there, the worker is gone) submit it
        to the scheduler, on a thread of its own (a Ray call must not wait on this one)."""
        record = express.record
        try:
            wire = answer.result()
            lost = False
        except BaseException:  # noqa: BLE001 - the worker is gone (or Ray is shutting down)
            wire, lost = None, True
        with self._lock:
            mine = self._on_express.pop(record.task_id, None) is express
        if wire is None:
            self._express.drop(record.pool, express.lease)
            if mine:
                threading.Thread(target=self._express_fallback, args=(express, lost),
                                 name="raysched-express", daemon=True).start()
            return
        self._express.give_back(record.pool, express.lease)
        if not mine:
            return
        c = Completion(*wire)
        end_s = time.time()
        deadline_s = record.deadline_s if record.deadline_s is not None else float("inf")
        status = (Status.COMPLETED if c.ok else Status.EXPIRED if c.expired
                  else Status.CANCELLED if c.error.startswith(ABORTED) else Status.FAILED)
        reason = ("" if c.ok else expired_at_worker(c.worker_id) if c.expired
                  else "cancelled by the caller" if status is Status.CANCELLED else c.error)
        self._express_report(express, c, status, end_s)
        self._deliver([ResultRecord(
            record.task_id, status, c.output, reason, c.worker_id, record.kind,
            record.priority, record.pool, queue_s=max(0.0, end_s - express.submit_s - c.service_s),
            service_s=c.service_s, total_s=end_s - express.submit_s,
            deadline_met=c.ok and end_s <= deadline_s, attempts=1)], ack=False)

    def _express_fallback(self, express: _OnExpress, lost: bool) -> None:
        """Submit an express task its worker refused unrun (``lost``: or lost, having maybe
        run it: that attempt counts in its Result) to the scheduler."""
        record, handle = express.record, express.handle
        if lost:
            with self._lock:
                self._extra_attempts[record.task_id] = 1
        try:
            self._send([record], [handle], RUN_WAIT_S)
        except Exception as exc:  # noqa: BLE001 - SubmitError, the client closed
            self._resolve(Result(task_id=record.task_id, status=Status.FAILED,
                                 reason=f"its express worker refused or lost it, and it could "
                                        f"not be submitted to the scheduler: "
                                        f"{type(exc).__name__}: {str(exc)[:300]}"))

    def _express_report(self, express: _OnExpress, c: Completion, status: Status,
                        end_s: float) -> None:
        """Keep the scheduler's report of an express task that ended with ``status``."""
        self._express.report((replace(express.record, payload=None).to_wire(),
                              replace(c, output=None).to_wire(), status.value,
                              express.submit_s, end_s))

    def _end_express(self, task_ids: list[str], reason: str) -> dict[str, bool]:
        """End the express tasks among ``task_ids`` here, ``cancelled`` for ``reason``: each
        worker is told not to start them (waited for, within ``CANCEL_WAIT_S``, so one not
        started by then never starts), and the scheduler gets their reports. Per task ended:
        whether this call ended it (its handle had no Result yet)."""
        with self._lock:
            ending = {t: self._on_express.pop(t) for t in task_ids if t in self._on_express}
        if not ending:
            return {}
        import ray

        issued_s = time.time()
        with contextlib.suppress(Exception):  # a lost worker runs nothing more
            if _ray_up():
                ray.get([e.lease.worker.abort.remote([t], issued_s)
                         for t, e in ending.items()], timeout=CANCEL_WAIT_S)
        ended: dict[str, bool] = {}
        for task_id, e in ending.items():
            ended[task_id] = self._resolve(Result(task_id=task_id, status=Status.CANCELLED,
                                                  reason=reason), delivered=False)
            self._express_report(e, Completion(task_id, e.lease.worker_id, ok=False,
                                               service_s=0.0, error=reason),
                                 Status.CANCELLED, time.time())
        return ended

    def map(self, tasks: Iterable[Task | Mapping[str, Any]], timeout: float | None = None
            ) -> Iterator[Result]:
        """Submit ``tasks`` (on the first ``next``) and yield their Results in completion
        order."""
        yield from as_completed_results(self.submit_many(tasks), timeout)

    async def submit_async(self, task: Task | Mapping[str, Any]) -> Result:
        """Submit from asyncio and await the Result."""
        handle = await asyncio.to_thread(self.submit, task)
        return await handle

    def cancel(self, task_ids: list[str]) -> list[bool]:
        """Cancel tasks by id: True for each one this call ended (queued, or running: a
        running CPU task runs to its end, its Result is ``cancelled``); False for one that had
        ended, is unknown, or another driver's (a driver cancels only the tasks it submitted).
        An id given more than once is cancelled once: True (if this call ended it) at its first
        place, False at the others. ``TypeError`` unless ``task_ids`` is a list of strings."""
        ids = task_id_list(task_ids)
        self._check_usable()
        unique = list(dict.fromkeys(ids))
        ended = self._end_express(unique, "cancelled by the caller")
        sent = [i for i in unique if i not in ended]
        if sent:
            ended.update(zip(sent, self._call("cancel", sent, self.client_id), strict=True))
        seen: set[str] = set()
        answers = []
        for i in ids:
            answers.append(ended[i] and i not in seen)
            seen.add(i)
        return answers

    def stats(self) -> dict[str, Any]:
        """The scheduler's load tables, queue depths, result counts and startup notes."""
        reports = self._express.take_reports()
        if reports:  # the express tasks ended so far count in them
            self._call("express_done", reports)
        return self._call("stats")

    def outstanding(self) -> int:
        with self._lock:
            return len(self._handles)

    def holds(self, task_id: str) -> bool:
        """Whether ``task_id`` was submitted by this client and has no Result yet."""
        with self._lock:
            return task_id in self._handles

    def close(self) -> None:
        """Stop polling and end what this client still waits for; shut the embedded Ray down
        if this client started it. Idempotent.

        The client's unfinished tasks are cancelled at the scheduler (a running one runs to its
        end there, as any cancelled task), and every handle still waiting gets its Result:
        the one the scheduler had for it, else ``cancelled`` with the reason. Later calls
        (``submit``, ``run``, ``cancel``, ``stats``) raise ``ClientClosedError``.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            on_express = list(self._on_express)
        self._end_express(on_express, "the client was closed before the task ended; its "
                                      "worker was told not to start it")
        if _ray_up():
            import ray

            with contextlib.suppress(Exception):  # best effort: a lease also ends unrenewed
                if reports := self._express.take_reports():
                    ray.get(self.actor.express_done.remote(reports), timeout=CLOSE_WAIT_S)
                if self._express.held():
                    self.actor.release_leases.remote(self.client_id)
        self._express.clear()
        if self._poller is not None:
            self._poller.join(timeout=POLL_TIMEOUT_S * 4)
        with self._lock:
            unfinished = list(self._handles)
        handed = bool(unfinished) and _ray_up() and self._hand_over(unfinished)
        self._end_unfinished(Status.CANCELLED, "the client was closed before the task ended" + (
            "; it was cancelled at the scheduler" if handed else ""))
        if self._owns_ray:
            import ray

            # A thread still in a call of this client when Ray shuts down would end the
            # process (Ray's worker is gone under it): the calls' tasks ended above, so their
            # answers are on their way.
            with self._room:
                self._room.wait_for(lambda: not self._calls, timeout=CLOSE_WAIT_S)
            ray.shutdown()

    def _hand_over(self, task_ids: list[str]) -> bool:
        """Cancel ``task_ids`` at the scheduler and deliver what it holds for this client:
        the Results of the tasks cancelled, and of those that ended before. Best effort, within
        ``CLOSE_WAIT_S``: False when the scheduler did not answer (``close`` ends the rest)."""
        import ray

        try:
            ray.get(self.actor.cancel.remote(task_ids, self.client_id), timeout=CLOSE_WAIT_S)
            records = ray.get(self.actor.poll.remote(self.client_id, 0.0, ack=self._take_acks()),
                              timeout=CLOSE_WAIT_S)
            self._deliver([ResultRecord.from_wire(r) for r in records])
            if received := self._take_acks():
                self.actor.ack.remote(self.client_id, received)
        except Exception:  # noqa: BLE001 - a lost or stuck scheduler: close goes on
            log.warning("closing client %s: the scheduler did not hand over its results",
                        self.client_id, exc_info=True)
            return False
        return True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _get(ref: Any) -> Any:
        import ray

        return ray.get(ref)

    def _call(self, method: str, *args: Any) -> Any:
        """Call the scheduler; if it is restarting, wait for it and call once more.

        Calls are idempotent (a task id submitted twice by one client is accepted once), so a
        call that "may or may not have executed" before a crash is safe to repeat.
        """
        from ray.exceptions import RayActorError

        self._check_usable()
        with self._room:
            self._calls += 1
        try:
            return self._get(getattr(self.actor, method).remote(*args))
        except RayActorError:
            if not self._reconnect():
                raise SchedulerNotFoundError(f"scheduler {self.name!r} is gone and did not come "
                                             f"back within {self.reconnect_s:.0f} s") from None
            return self._get(getattr(self.actor, method).remote(*args))
        finally:
            with self._room:
                self._calls -= 1
                self._room.notify_all()

    def _check_usable(self) -> None:
        """``ClientClosedError`` once the client is closed; ``SchedulerNotFoundError`` once
        this driver has shut Ray down: a call would start or join a Ray of its own
        (``ray.init`` again, and ``connect``, reach the scheduler)."""
        if self._closed.is_set():
            raise ClientClosedError(f"this client of scheduler {self.name!r} is closed; "
                                    f"raysched.connect again for a new one")
        if not _ray_up():
            raise SchedulerNotFoundError(f"Ray was shut down in this driver: scheduler "
                                         f"{self.name!r} cannot be reached; ray.init and "
                                         f"raysched.connect again to reach it")

    def _to_record(self, task: Task, pickled: dict[int, bytes]) -> TaskRecord:
        """``task`` as sent to the scheduler, its payload by reference when it is large
        (``pickled``: as ``Task.to_record``'s)."""
        record = task.to_record(pickled)
        size = record.payload.size_bytes()
        if size <= INLINE_PAYLOAD_BYTES:
            return record
        import ray

        return replace(record, payload=ByRef(ray.put(record.payload), size))

    def _deliver(self, records: list[ResultRecord], ack: bool = True) -> None:
        """Resolve the handles of ``records``, fetching outputs sent by reference. With ``ack``
        (results the scheduler owes; an express task's it does not), each id is noted for
        acknowledgement with the next poll before its handle is resolved (a driver may submit
        the id again at once). A result whose output died with a scheduler that
        restarted is not acknowledged: the restarted scheduler runs its task again and sends a
        new one."""
        from ray.exceptions import OwnerDiedError

        lists: dict[Any, Any] = {}
        results: list[Result] = []
        deliver = results.append
        for r in records:
            value = out = r.output
            try:
                if isinstance(out, ByRef):
                    if out.ref not in lists:
                        lists[out.ref] = self._get(out.ref)
                    value = lists[out.ref] if out.index is None else lists[out.ref][out.index]
            except OwnerDiedError:
                continue
            except Exception as exc:  # noqa: BLE001 - any failure to fetch ends the task here
                deliver(_failed(r, f"its output ({out.size_bytes} bytes, by reference) could "
                                   f"not be fetched: {type(exc).__name__}: {str(exc)[:300]}"))
                continue
            if isinstance(value, PickledOutput):
                try:
                    value = cloudpickle.loads(value.data)
                # A class this driver lacks, say; BaseException: whatever a __reduce__ raises
                # (SystemExit too) ends this task, not the thread delivering the others.
                except BaseException as exc:  # noqa: BLE001
                    deliver(_failed(r, f"its output could not be unpickled in this driver: "
                                       f"{describe_error(exc, 300)}"))
                    continue
            if self._extra_attempts and r.task_id in self._extra_attempts:
                with self._lock:
                    extra = self._extra_attempts.pop(r.task_id, 0)
                r = replace(r, attempts=r.attempts + extra)
            deliver(Result.from_record(r, output=value))
        if results:
            if ack:
                with self._lock:
                    self._acks.extend(r.task_id for r in results)
            for result in results:
                self._resolve(result)

    def _deliver_replies(self, replies: list[tuple[Any, ...] | None]) -> None:
        """Deliver the Results a submit's or run's answer carried; they are acknowledged with
        the next poll."""
        self._deliver([ResultRecord.from_wire(r) for r in replies if r is not None])

    def _take_acks(self) -> list[str]:
        """The ids of Results received and not yet acknowledged, taken."""
        if not self._acks:
            return []
        with self._lock:
            taken, self._acks = self._acks, []
        return taken

    def _resolve(self, result: Result, delivered: bool = True) -> bool:
        """Resolve the handle of ``result``'s task; False when it has none (resolved before:
        a ``delivered`` result is then counted as a duplicate dropped)."""
        with self._room:
            self._by_ref.pop(result.task_id, None)
            handle = self._handles.pop(result.task_id, None)
            if handle is None and delivered:
                # A result delivered again after a scheduler restart: the first one stands.
                self.duplicates_dropped += 1
            self._room.notify_all()
        if handle is not None:
            handle._set(result)
        return handle is not None

    def _send_reports(self) -> None:
        """Send the scheduler the reports of express tasks that ended (fire and forget: they
        are its counts and telemetry, not anybody's Result)."""
        reports = self._express.take_reports()
        if reports and _ray_up():
            self.actor.express_done.remote(reports)

    def _ensure_poller(self) -> None:
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name="raysched-poller",
                                            daemon=True)
            self._poller.start()

    def _poll_loop(self) -> None:
        try:
            self._poll_until_closed()
        finally:
            # The last results received are acknowledged before the client goes, so they are
            # not owed (and kept in the scheduler's log) for ever.
            ack = self._take_acks()
            if ack and _ray_up():
                import ray

                # Bounded: a scheduler that is gone or restarting owes them to no one.
                with contextlib.suppress(Exception):
                    ray.get(self.actor.ack.remote(self.client_id, ack), timeout=POLL_TIMEOUT_S * 2)

    def _poll_until_closed(self) -> None:
        """Poll until the client closes, each poll acknowledging the Results received since
        the last one."""
        while not self._closed.is_set():
            if not _ray_up():
                # The driver shut Ray down without closing this client: its results cannot
                # come, and a call now would start or join a Ray of its own.
                self._fail_all("Ray was shut down in this driver before the result came")
                return
            self._send_reports()
            with self._lock:
                ack, self._acks = self._acks, []
                self._acks_in_flight = frozenset(ack)
            try:
                results = self._get(self.actor.poll.remote(self.client_id, POLL_TIMEOUT_S,
                                                           ack=ack))
            # A lost scheduler fails in many ways; and Ray raises SystemExit in a thread
            # waiting in ray.get when the driver shuts it down (the loop's head ends then).
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                with self._lock:  # sent again with the next poll
                    self._acks[:0] = ack
                    self._acks_in_flight = frozenset()
                if isinstance(exc, SystemExit) or not _ray_up():
                    # Ray raises SystemExit here only when this driver shuts it down, and it
                    # may do so before ray.is_initialized() turns False: either way the
                    # results cannot come.
                    self._fail_all("Ray was shut down in this driver before the result came")
                    return
                # The scheduler restarts (max_restarts) and replays its task log: wait for it,
                # then keep polling with the same client id. Unacknowledged results come again.
                if not self._reconnect():
                    with self._lock:
                        ids = sorted(self._handles)
                    self._fail_all(f"lost the scheduler ({type(exc).__name__}) and it did not "
                                   f"come back within {self.reconnect_s:.0f} s; unfinished "
                                   f"tasks: {', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''}")
                    return
                continue
            with self._lock:
                self._acks_in_flight = frozenset()
            self._deliver([ResultRecord.from_wire(r) for r in results])
            if results:
                # Let a thread waiting on one of these results run before this one sends the
                # next poll (which holds the GIL for a while).
                time.sleep(0)

    def _reconnect(self) -> bool:
        """Wait for the scheduler to come back (Ray restarts it; it replays its task log).

        The handle this client created the scheduler with is kept: it is what keeps an
        embedded (non-detached) scheduler alive, and Ray routes it to the restarted actor. A
        handle found by name is a weak one; swapping to it would let Ray destroy the
        scheduler. Only a client that found a detached scheduler by name looks it up again.
        """
        import ray

        give_up = time.monotonic() + self.reconnect_s
        while time.monotonic() < give_up and not self._closed.is_set() and _ray_up():
            try:
                actor = (self.actor if self._owns_actor
                         else ray.get_actor(self.name, namespace=self.namespace))
                ray.get(actor.start.remote(), timeout=10)
                self.actor = actor
                self._send_payloads_again()
                return True
            except Exception:  # noqa: BLE001 - any failure here means: still restarting
                time.sleep(0.5)
        return False

    def _send_payloads_again(self) -> None:
        """Submit again the unfinished tasks whose payloads went by reference: a restarted
        scheduler holds them until their driver does (``SchedulerService.submit``)."""
        import ray

        with self._lock:
            records = list(self._by_ref.values())
        for i in range(0, len(records), SUBMIT_CHUNK):
            replies = ray.get(self.actor.submit.remote(
                self.client_id, [r.to_wire() for r in records[i:i + SUBMIT_CHUNK]]))
            self._deliver_replies(replies)

    def _forget(self, task_ids: list[str]) -> None:
        with self._room:
            for task_id in task_ids:
                self._handles.pop(task_id, None)
                self._by_ref.pop(task_id, None)
            self._room.notify_all()

    def _fail_all(self, reason: str) -> None:
        self._end_unfinished(Status.FAILED, reason)

    def _end_unfinished(self, status: Status, reason: str) -> None:
        """End every handle still waiting with ``status`` and ``reason``, here."""
        with self._room:
            handles, self._handles = self._handles, {}
            self._by_ref.clear()
            self._room.notify_all()
        for task_id, h in handles.items():
            h._set(Result(task_id=task_id, status=status, reason=reason))


def task_id_list(task_ids: Iterable[str]) -> list[str]:
    """``task_ids`` as a list; ``TypeError`` for a string (it would be read as its characters)
    or anything but strings in it."""
    ids = [] if isinstance(task_ids, str) else list(task_ids)
    if isinstance(task_ids, str) or not all(isinstance(t, str) for t in ids):
        raise TypeError(f"cancel takes a list of task ids (strings), got {task_ids!r}; for "
                        f"one task, cancel([task_id]) or handle.cancel()")
    return ids


def _failed(r: ResultRecord, reason: str) -> Result:
    """The Result of ``r`` ended ``failed`` here, at the driver, for ``reason``."""
    return Result.from_record(replace(r, status=Status.FAILED, reason=reason), output=None)


def _ray_up() -> bool:
    """Whether this process is still connected to Ray: a call after ``ray.shutdown`` would
    start or join a Ray again on its own."""
    import ray

    return bool(ray.is_initialized())


def connect(address: str | None = None, config: SchedulerConfig | Mapping[str, Any] | None = None,
            *, num_cpus: int | None = None, name: str | None = None,
            ready_timeout_s: float = 120.0, max_outstanding: int = 100_000
            ) -> Client | ShardedClient:
    """Connect a driver to raysched.

    - No ``address`` and no ``RAY_ADDRESS`` (and Ray not started): start an embedded local Ray on
      127.0.0.1 and a scheduler with ``config`` (default: ``default_config()``).
    - An ``address`` (or inside ``ray job submit``): join that cluster and find the named
      scheduler, creating it (detached, so other drivers share it) if it is not running.
    - With ``config.shards`` > 1 (or a running scheduler started so), every shard is started
      or found and a ``ShardedClient`` is returned: the same calls, spread over the shards
      (``raysched.shards``). ``max_outstanding`` then holds per shard.

    ``ConnectionError`` at once (two seconds) for an address that does not answer.
    """
    import ray

    from raysched._ray import init_local, loopback_env, reachable
    from raysched.config import shard_name
    from raysched.scheduler import SchedulerActor

    cfg = (config if isinstance(config, SchedulerConfig)
           else SchedulerConfig.model_validate(config) if config is not None else default_config())
    owns_ray = False
    if not ray.is_initialized():
        if address is None and not os.environ.get("RAY_ADDRESS"):  # an empty one is unset
            init_local(num_cpus=num_cpus, namespace=cfg.namespace)
            owns_ray = True
        else:
            reachable(address or os.environ.get("RAY_ADDRESS"))
            loopback_env()
            ray.init(address=address, namespace=cfg.namespace, log_to_driver=False)
    if name:
        cfg = cfg.model_copy(update={"name": name})

    def make(shard_cfg: SchedulerConfig) -> Any:
        # Restartable: after a crash Ray starts it again and it replays its task log.
        options: dict[str, Any] = {
            "name": shard_cfg.actor_name, "namespace": cfg.namespace, "get_if_exists": True,
            "num_cpus": 0, "max_concurrency": 10_000, "max_restarts": -1, "max_task_retries": 0,
            # On the head node, where its task log is, before and after a restart.
            "resources": {"node:__internal_head__": 0.001}}
        if not owns_ray:
            options["lifetime"] = "detached"
        return ray.remote(SchedulerActor).options(**options).remote(shard_cfg.model_dump())

    def wait_ready(actors: list[Any]) -> list[dict[str, Any]]:
        try:
            ray.get([a.start.remote() for a in actors])
            return ray.get([a.ready.remote(ready_timeout_s) for a in actors],
                           timeout=ready_timeout_s + 10)
        except ray.exceptions.GetTimeoutError:
            raise SchedulerNotFoundError(f"scheduler {cfg.name!r} did not become ready in "
                                         f"{ready_timeout_s} s") from None

    first = make(cfg.for_shard(0))
    # A scheduler already running keeps its own number of shards.
    shards = wait_ready([first])[0].get("shards", 1)
    if shards == 1:
        return Client(first, owns_ray, max_outstanding, name=cfg.name, namespace=cfg.namespace)
    from raysched.shards import ShardedClient

    cfg = cfg.model_copy(update={"shards": shards})
    actors = [first] + [make(cfg.for_shard(k)) for k in range(1, shards)]
    wait_ready(actors[1:])
    return ShardedClient([
        Client(a, owns_ray=False, owns_actor=owns_ray, max_outstanding=max_outstanding,
               name=shard_name(cfg.name, k), namespace=cfg.namespace)
        for k, a in enumerate(actors)], owns_ray=owns_ray)


def _waiting_pools(stats: Mapping[str, Any]) -> list[str]:
    """Notes on pools with no worker yet and none refused: their tasks wait for one."""
    return [f"pool {pool}: no worker registered yet ({h['starting']} starting, the oldest for "
            f"{h['oldest_start_s']:.0f} s); its tasks wait for one"
            for pool, h in stats.get("supervision", {}).items() if not h["live"] and not h["down"]]


def find(name: str = "raysched-scheduler", namespace: str = "raysched") -> Any:
    """The running scheduler actor's handle, or ``SchedulerNotFoundError``."""
    import ray

    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        raise SchedulerNotFoundError(f"no scheduler {name!r} in namespace {namespace!r}") from None


def as_completed_results(handles: list[TaskHandle], timeout: float | None = None
                         ) -> Iterator[Result]:
    """The Results of ``handles`` in completion order; ``TaskTimeoutError`` after ``timeout``
    seconds for the whole lot."""
    futures = {h._future: h for h in handles}
    try:
        for fut in concurrent.futures.as_completed(futures, timeout=timeout):
            yield fut.result()
    except concurrent.futures.TimeoutError:
        left = sum(1 for f in futures if not f.done())
        raise TaskTimeoutError(f"{left} of {len(handles)} tasks have no result after "
                               f"{timeout} s") from None


def wait_all(handles: Iterable[TaskHandle], timeout: float | None = None) -> list[Result]:
    """Results of ``handles`` in order; a deadline for the whole lot, not for each."""
    end = None if timeout is None else time.monotonic() + timeout
    return [h.result(None if end is None else max(0.0, end - time.monotonic())) for h in handles]
