"""A task's callable is pickled once per submit call by the driver and unpickled per task."""

from __future__ import annotations

import threading

import pytest

from actors.cpu_actor import load_arguments, load_callable
from raysched import Task
from raysched.core.protocol import describe_error


def test_a_callable_travels_as_the_bytes_the_driver_pickled() -> None:
    base = 40

    def add(x: int) -> int:  # a closure: cloudpickle takes it by value
        return base + x

    task = Task(kind="noop", sla_ms=1_000, payload={"fn": add, "args": (2,)})
    payload = task.to_record().payload
    assert isinstance(payload.fn, bytes)
    assert payload.size_bytes() >= len(payload.fn)  # a large closure goes by reference
    # Its arguments travel pickled too, apart from it: the scheduler carries bytes only.
    assert payload.args == () and isinstance(payload.pickled_args, bytes)
    assert payload.size_bytes() >= len(payload.fn) + len(payload.pickled_args)
    args, kwargs = load_arguments(payload)
    assert load_callable(payload.fn)(*args, **kwargs) == 42
    assert load_callable(len) is len  # a callable as it is (a payload built without a Task)


def test_one_submit_call_pickles_a_function_once_and_each_task_gets_its_own() -> None:
    calls = []

    def work(seen: list[int] = calls) -> int:  # noqa: B006 - state the worker must not share
        seen.append(1)
        return len(seen)

    pickled: dict[int, bytes] = {}
    a, b = (Task(kind="noop", sla_ms=1_000, payload={"fn": work}).to_record(pickled).payload
            for _ in range(2))
    assert a.fn is b.fn and len(pickled) == 1
    # Each task unpickles its own copy, as Ray does a call's arguments: no state carries over.
    assert [load_callable(p.fn)() for p in (a, b)] == [1, 1]
    # A later call pickles the function as it is then.
    calls.append(0)
    again = Task(kind="noop", sla_ms=1_000, payload={"fn": work}).to_record({}).payload
    assert load_callable(again.fn)() == 2


def test_a_callable_that_cannot_be_pickled_is_refused_by_name() -> None:
    lock = threading.Lock()
    task = Task(kind="noop", sla_ms=1_000, payload={"fn": lambda: lock})
    with pytest.raises(TypeError, match="payload.fn .* cannot be pickled"):
        task.to_record()
    assert task.to_core(0.0).task_id == task.id  # the core's view needs no pickle


def test_arguments_that_cannot_be_pickled_are_refused_by_name() -> None:
    task = Task(kind="noop", sla_ms=1_000, payload={"fn": len, "args": (threading.Lock(),)})
    with pytest.raises(TypeError, match="payload.args or payload.kwargs cannot be pickled"):
        task.to_record()


def test_a_callable_without_arguments_carries_none_to_unpickle() -> None:
    payload = Task(kind="noop", sla_ms=1_000, payload={"fn": len}).to_record().payload
    assert payload.pickled_args is None and load_arguments(payload) == ((), {})


def test_an_error_whose_message_raises_is_still_described() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise SystemExit(3)

    assert describe_error(ValueError("x" * 900), 10) == "ValueError: xxxxxxxxxx"
    assert describe_error(Unprintable()) == ("Unprintable (its message could not be built: "
                                             "SystemExit)")


def test_arguments_that_hold_an_object_ref_anywhere_go_as_they_are(monkeypatch) -> None:
    # Pickled out of band, a Ray object ref pins its object for the driver's life: Ray's own
    # serialization carries those arguments. A stand-in class plays the ref (no Ray here).
    import sys
    import types

    class ObjectRef:
        pass

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(ObjectRef=ObjectRef))
    ref = ObjectRef()
    payload = Task(kind="noop", sla_ms=1_000, payload={"fn": len, "args": (ref,)}
                   ).to_record().payload
    assert payload.pickled_args is None and payload.args == (ref,)
    assert load_arguments(payload) == ((ref,), {})
    # Anywhere inside them: in a list in a keyword argument, in an object's attribute.
    holder = types.SimpleNamespace(blocks=[1, 2, ref])
    for args, kwargs in [((), {"refs": [ref]}), ((holder,), {}), ((1, {"a": (ref,)}), {})]:
        payload = Task(kind="noop", sla_ms=1_000,
                       payload={"fn": len, "args": args, "kwargs": kwargs}).to_record().payload
        assert payload.pickled_args is None
        assert load_arguments(payload) == (args, kwargs)
    # Without one, they are pickled by the driver as before.
    payload = Task(kind="noop", sla_ms=1_000, payload={"fn": len, "args": ([1, 2],)}
                   ).to_record().payload
    assert payload.pickled_args is not None and load_arguments(payload) == (([1, 2],), {})
