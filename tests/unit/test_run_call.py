"""``SchedulerActor.run``, the call that submits one task and answers with its Result: every
Result reaches its driver once, whichever way the call ends. The actor's method runs on a real
service and core in a plain event loop; Ray is not started (``start`` and the worker call are
the edge replaced here)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from raysched.core.protocol import Completion, ResultRecord
from raysched.scheduler import SchedulerActor
from raysched.service import Batch
from tests.unit.test_service import FakeClock, make_service, task


def actor_over(clock: FakeClock) -> tuple[SchedulerActor, list[Batch]]:
    """A ``SchedulerActor`` without Ray around a fresh service; its dispatch passes land in the
    returned list instead of going to workers."""
    actor = SchedulerActor.__new__(SchedulerActor)
    actor.service = make_service(clock)
    sent: list[Batch] = []

    async def start() -> list[str]:
        return []

    actor.start = start  # type: ignore[method-assign]
    actor._dispatch_now = lambda: sent.extend(actor.service.assign().batches)  # type: ignore
    return actor, sent


def finish(actor: SchedulerActor, clock: FakeClock, batch: Batch) -> None:
    clock.now_s += 0.01
    actor.service.complete([Completion(i.task_id, batch.worker_id, ok=True, service_s=0.01,
                                       output="ok") for i in batch.items])


def test_run_answers_with_the_result_when_the_task_ends_in_time() -> None:
    clock = FakeClock()
    actor, sent = actor_over(clock)

    async def main() -> Any:
        call = asyncio.create_task(actor.run("A", task("t1").to_wire(), 5.0))
        await asyncio.sleep(0)
        finish(actor, clock, sent[0])
        return await call

    answer = asyncio.run(main())
    assert ResultRecord.from_wire(answer).output == "ok"
    assert not actor.service.has_results("A")  # in the answer, not the mailbox as well
    assert set(actor.service.unacked()) == {"t1"}  # owed until the driver acknowledges it


def test_a_result_that_ends_as_the_wait_runs_out_goes_to_the_mailbox() -> None:
    clock = FakeClock()
    actor, sent = actor_over(clock)

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        call = loop.create_task(actor.run("A", task("t1").to_wire(), 0.05))
        await asyncio.sleep(0)
        # The worker's report is handled just after the wait ran out, in the same turn of a
        # loop that was busy past both (before the call could resume).
        loop.call_later(0.051, finish, actor, clock, sent[0])
        loop.call_later(0.01, time.sleep, 0.1)
        return await call

    assert asyncio.run(main()) is None
    assert [r.task_id for r in actor.service.take("A")] == ["t1"]


def test_a_cancelled_call_leaves_the_result_to_the_mailbox() -> None:
    clock = FakeClock()
    actor, sent = actor_over(clock)

    async def main() -> None:
        call = asyncio.create_task(actor.run("A", task("t1").to_wire(), 5.0))
        await asyncio.sleep(0)
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        finish(actor, clock, sent[0])

    asyncio.run(main())
    assert [r.task_id for r in actor.service.take("A")] == ["t1"]
