"""A task's callable is pickled once by the driver and unpickled once per worker."""

from __future__ import annotations

from actors.cpu_actor import load_callable
from raysched import Task
from raysched.models import pickled_callable


def test_a_callable_travels_as_the_bytes_the_driver_pickled() -> None:
    base = 40

    def add(x: int) -> int:  # a closure: cloudpickle takes it by value
        return base + x

    payload = Task(kind="noop", sla_ms=1_000, payload={"fn": add, "args": (2,)}).to_record().payload
    assert isinstance(payload.fn, bytes)
    assert payload.size_bytes() >= len(payload.fn)  # a large closure goes by reference
    assert load_callable(payload.fn)(*payload.args) == 42


def test_one_function_is_pickled_once_and_unpickled_once() -> None:
    def work() -> str:
        return "done"

    first, again = pickled_callable(work), pickled_callable(work)
    assert first is again
    assert load_callable(first) is load_callable(bytes(first))  # equal bytes, one function
    # Builtins are not weakly referable: pickled each time, still right.
    assert load_callable(pickled_callable(len))("abc") == 3
    assert load_callable(len) is len  # a callable as it is (a payload built without a Task)
