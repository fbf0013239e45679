"""One task's trouble stays its own: an output that cannot be pickled where it runs, or unpickled
where the driver runs, an argument that only the driver can unpickle, a callable that raises
KeyboardInterrupt or an exception whose message cannot be built, a cancel that came too late;
and a client closed with tasks unfinished leaves no handle waiting.

Each runs on the shared local Ray, through the public API, with short callables on one CPU
worker so that they travel in one batch (one plain call answering for all of them).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from ray import cloudpickle

from raysched import Status, Task
from raysched.errors import ClientClosedError
from tests.ray.conftest import small_config

cloudpickle.register_pickle_by_value(sys.modules[__name__])

DRIVER_FLAG = "RAYSCHED_TEST_THIS_IS_THE_DRIVER"


def _rebuild(value: int) -> ClusterOnly:
    # Stands in for a class from a package the cluster has and the driver does not: it
    # unpickles in Ray's worker processes (started before the flag was set) and fails here,
    # with the exception the flag names.
    if os.environ.get(DRIVER_FLAG) == "SystemExit":
        raise SystemExit(7)
    if os.environ.get(DRIVER_FLAG):
        raise ImportError("No module named 'clusteronly'")
    return ClusterOnly(value)


class ClusterOnly:
    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> tuple:
        return (_rebuild, (self.value,))


class DriverOnly:
    """Stands in for an object of a module only the driver has: it unpickles in no other
    process, raising ``raised`` there."""

    def __init__(self, value: int, raised: str) -> None:
        self.value, self.raised = value, raised

    def __reduce__(self) -> tuple:
        return (_driver_only, (self.value, self.raised, os.getpid()))


def _driver_only(value: int, raised: str, driver_pid: int) -> DriverOnly:
    if os.getpid() != driver_pid:
        if raised == "SystemExit":
            raise SystemExit(7)
        raise ImportError("No module named 'driveronly'")
    return DriverOnly(value, raised)


def _cluster_only() -> ClusterOnly:
    return ClusterOnly(1)


def _lock() -> object:
    return threading.Lock()


def _interrupted() -> None:
    raise KeyboardInterrupt


class BadMessage(Exception):
    def __str__(self) -> str:
        return self.mesage  # type: ignore[attr-defined]  # the typo is the point


def _raises_bad_message() -> None:
    raise BadMessage("x")


def _value(i: int) -> int:
    return i


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def task(fn, *args, task_id: str | None = None) -> Task:
    kw = {"id": task_id} if task_id else {}
    return Task(kind="custom", priority="LOW", sla_ms=30_000.0,
                payload={"fn": fn, "args": args}, **kw)


@pytest.mark.parametrize("raised,reason", [("ImportError", "clusteronly"),
                                            ("SystemExit", "SystemExit")])
def test_an_output_the_driver_cannot_unpickle_fails_only_its_own_task(make_client, monkeypatch,
                                                                      raised, reason):
    client = make_client(cpu={"replicas": 1})
    monkeypatch.setenv(DRIVER_FLAG, raised)
    handles = client.submit_many([task(_value, 1), task(_cluster_only), task(_value, 2)])
    first, odd, second = (h.result(30) for h in handles)
    assert (first.status, first.output) == (Status.COMPLETED, 1)
    assert (second.status, second.output) == (Status.COMPLETED, 2)
    assert odd.status is Status.FAILED
    assert "could not be unpickled in this driver" in odd.reason and reason in odd.reason
    # Nothing is owed or waiting: the poll that carried it went on, and so does the next.
    assert client.outstanding() == 0
    later = client.submit(task(_value, 3))
    assert (later.result(30).status, later.result(0).output) == (Status.COMPLETED, 3)


@pytest.mark.parametrize("raised", ["ImportError", "SystemExit"])
def test_an_argument_only_the_driver_can_unpickle_fails_only_its_own_task(make_client, raised):
    # The scheduler carries a callable's arguments as the driver pickled them: only the worker
    # unpickles them, so the scheduler's call that carries the batch (and the scheduler: a
    # SystemExit there would end its actor) is not where this fails.
    client = make_client(cpu={"replicas": 1})
    handles = client.submit_many([task(_value, 1), task(_value, DriverOnly(5, raised)),
                                  task(_value, 2)])
    first, odd, second = (h.result(30) for h in handles)
    assert (first.output, second.output) == (1, 2)
    assert odd.status is Status.FAILED and raised in odd.reason
    later = client.run(task(_value, 3), timeout=30)
    assert (later.status, later.output) == (Status.COMPLETED, 3)


@pytest.mark.parametrize("odd_fn,reason", [(_lock, "cannot be pickled"),
                                            (_interrupted, "KeyboardInterrupt"),
                                            (_raises_bad_message, "BadMessage")],
                         ids=["unpicklable-output", "keyboard-interrupt", "unprintable-error"])
def test_a_task_that_fails_in_its_batch_fails_only_itself(make_client, odd_fn, reason):
    client = make_client(cpu={"replicas": 1})
    handles = client.submit_many([task(_value, 1), task(odd_fn), task(_value, 2)])
    first, odd, second = (h.result(30) for h in handles)
    assert (first.output, second.output) == (1, 2)
    assert odd.status is Status.FAILED and reason in odd.reason


def test_a_cancel_that_came_too_late_does_not_stop_the_next_task_with_its_id(make_client):
    client = make_client(cpu={"replicas": 1})
    running = client.submit(task(_sleep, 0.5, task_id="again"))
    time.sleep(0.2)  # it has started on the one worker
    assert running.cancel() is True
    assert running.result(30).status is Status.CANCELLED
    time.sleep(0.5)  # the cancelled callable has run to its end
    again = client.run(task(_value, 7, task_id="again"), timeout=30)
    assert (again.status, again.output) == (Status.COMPLETED, 7)


def test_close_ends_every_unfinished_handle_and_refuses_later_calls(make_client):
    client = make_client(cpu={"replicas": 1, "slots": 1})
    running = client.submit(task(_sleep, 1.0))
    queued = client.submit(task(_value, 1))
    time.sleep(0.3)
    client.close()
    for h in (running, queued):
        r = h.result(0)  # ended by close, not left waiting: the scheduler's own cancelled Result
        assert r.status is Status.CANCELLED and r.reason
    assert client.outstanding() == 0
    for call in (lambda: client.submit(task(_value, 2)), client.stats,
                 lambda: client.cancel([running.task_id])):
        with pytest.raises(ClientClosedError):
            call()
    client.close()  # again: nothing to do


def test_a_driver_cannot_cancel_another_drivers_task(make_client):
    import raysched

    config = small_config(cpu={"replicas": 1})
    mine = make_client(config)
    theirs = raysched.connect(config=config)  # a second driver of the same scheduler
    try:
        running = mine.submit(task(_sleep, 0.5, task_id="job-1"))
        refused = theirs.submit(task(_value, 1, task_id="job-1"))
        assert refused.result(30).status is Status.REJECTED
        assert refused.cancel() is False and theirs.cancel(["job-1"]) == [False]
    finally:
        theirs.close()  # cancels its own unfinished tasks only
    assert (running.result(30).status, running.result(0).output) == (Status.COMPLETED, 0.5)


def test_cancel_takes_a_list_of_ids(make_client):
    client = make_client()
    for bad in ("abc", [None], [1]):
        with pytest.raises(TypeError, match="list of task ids"):
            client.cancel(bad)
    assert client.cancel(["never-submitted"]) == [False]


def test_an_id_submitted_again_runs_again(make_client):
    # At once, before the acknowledgement of the first Result would go with the next poll: the
    # scheduler, still owing that Result, must not answer the new task with it.
    client = make_client()
    for i in range(3):
        r = client.run(task(_value, i, task_id="same"), timeout=30)
        assert (r.status, r.output) == (Status.COMPLETED, i)
    for i in range(3):
        h = client.submit(task(_value, 10 + i, task_id="same-submitted"))
        assert h.result(30).output == 10 + i
