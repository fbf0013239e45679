"""An abort that reaches a worker before its task does stops that task, and only that one:
not a later attempt, nor a later task given the same id (``actors.aborts``), on CPU and LLM
workers alike."""

from __future__ import annotations

import asyncio
import dataclasses

from actors.aborts import AbortMarks
from actors.cpu_actor import CPUActor
from actors.llm_actor import LLMActor
from raysched.core.protocol import WorkItem, WorkPayload


def _llm_item(sent_s: float) -> WorkItem:
    return WorkItem("t0", "summarization", 2, 1e18,
                    WorkPayload(prompt="x" * 400, max_new_tokens=4), sent_s=sent_s)


def test_a_mark_stops_only_an_item_sent_before_it_and_is_used_up() -> None:
    marks = AbortMarks(kept=2)
    item = _llm_item(sent_s=10.0)
    assert marks.mark(["t0"], issued_s=11.0) == 1
    assert marks.stops(item) and not marks.stops(item)  # used up
    marks.mark(["t0"], issued_s=9.0)  # came too late: the item was sent after it
    assert not marks.stops(item)
    for i in range(3):
        marks.mark([f"x{i}"], issued_s=20.0)
    assert not marks.stops(dataclasses.replace(item, task_id="x0"))  # the oldest went
    assert marks.stops(dataclasses.replace(item, task_id="x2"))


def test_a_cpu_worker_drops_a_task_aborted_before_it_came() -> None:
    worker = CPUActor("cpu-0", "cpu")
    item = WorkItem("t0", "classification", 1, 1e18, WorkPayload(features=[0.5] * 8),
                    sent_s=10.0)
    worker.abort(["t0"], 11.0)
    dropped = worker._one(item)
    assert not dropped.ok and dropped.error == "aborted before it started"
    assert worker._one(dataclasses.replace(item, sent_s=12.0)).ok  # a later attempt runs


def test_an_llm_worker_drops_a_request_aborted_before_it_came() -> None:
    actor = LLMActor("llm-0", "llm-7b", engine="sim", max_batch_size=4, max_wait_ms=0,
                     time_scale=0.001)

    async def go():
        assert await actor.abort(["t0"], issued_s=11.0) == 0  # not here yet: marked
        (dropped,) = await actor.execute([_llm_item(sent_s=10.0)]).__anext__()
        (later,) = await actor.execute([_llm_item(sent_s=12.0)]).__anext__()
        return dropped, later

    dropped, later = asyncio.run(go())
    assert not dropped.ok and dropped.error == "aborted" and dropped.num_generated_tokens == 0
    assert later.ok and later.num_generated_tokens == 4
