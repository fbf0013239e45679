"""Pool supervision on a fake clock: backoff, the failure budget, and when a pool is down."""

from __future__ import annotations

from raysched.supervisor import MAX_START_BACKOFF_S, START_BACKOFF_S, PoolSupervisor


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_a_pool_is_owed_its_wanted_workers_and_a_replacement_for_each_loss() -> None:
    clock = Clock()
    sup = PoolSupervisor(clock)
    sup.add_pool("cpu", 2)
    assert sup.to_start() == ["cpu", "cpu"]
    sup.starting("cpu", "cpu-0")
    sup.starting("cpu", "cpu-1")
    assert sup.to_start() == []
    sup.registered("cpu", "cpu-0")
    assert sup.settled("cpu") and sup.health("cpu").live == 1
    sup.lost("cpu", "cpu-0")
    assert sup.to_start() == ["cpu"]


def test_failed_starts_back_off_then_the_pool_is_down_with_the_reason() -> None:
    clock = Clock()
    sup = PoolSupervisor(clock, max_start_failures=3)
    sup.add_pool("llm-7b", 1)
    waits = []
    for n in range(3):
        assert sup.to_start() == ["llm-7b"]
        sup.starting("llm-7b", f"w{n}")
        reason = sup.start_failed("llm-7b", f"w{n}", "RayActorError: died in __init__")
        if n < 2:
            assert reason == "" and not sup.settled("llm-7b")
            assert sup.to_start() == []  # backing off
            waits.append(START_BACKOFF_S * 2 ** n)
            clock.now_s += min(MAX_START_BACKOFF_S, waits[-1])
    assert "3 starts in a row failed" in reason and "died in __init__" in reason
    assert sup.settled("llm-7b") and sup.health("llm-7b").down == reason
    clock.now_s += 3600
    assert sup.to_start() == []  # the budget is spent
    # A worker that does come up (started by hand, say) brings the pool back.
    sup.registered("llm-7b", "w9")
    assert sup.health("llm-7b").down == "" and sup.health("llm-7b").start_failures == 0


def test_a_failed_start_while_a_worker_lives_never_takes_the_pool_down() -> None:
    clock = Clock()
    sup = PoolSupervisor(clock, max_start_failures=1)
    sup.add_pool("cpu", 2)
    sup.starting("cpu", "a")
    sup.starting("cpu", "b")
    sup.registered("cpu", "a")
    assert sup.start_failed("cpu", "b", "no node") == ""
    assert sup.settled("cpu") and sup.to_start() == []


def test_a_pool_of_zero_replicas_is_down_from_the_start() -> None:
    sup = PoolSupervisor(Clock())
    sup.add_pool("llm-70b", 0)
    assert sup.settled("llm-70b") and "no workers" in sup.health("llm-70b").down
