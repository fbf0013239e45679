"""The vLLM engine's stream bookkeeping, against a stand-in for vLLM's ``AsyncLLM``.

These run everywhere (no GPU, no vllm): the stand-in has ``AsyncLLM``'s surface as the engine
uses it (``generate(prompt, sampling_params, request_id, *, priority)`` yielding outputs with
``outputs[0].token_ids`` deltas, ``finished`` and ``finish_reason``; ``abort(request_id)``;
``errored``; ``EngineDeadError`` from every stream when the engine dies). The same engine against
real vLLM on a GPU is in ``test_vllm_engine.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from actors.engines.base import Sequence
from actors.engines.vllm_engine import VLLMEngine
from actors.llm_actor import LLMActor
from raysched.core.protocol import WorkItem
from raysched.models import Payload


class EngineDeadError(RuntimeError):
    """Same name as vLLM's ``vllm.v1.engine.exceptions.EngineDeadError``."""


@dataclass
class _Completion:
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class _Output:
    outputs: list[_Completion]
    finished: bool


@dataclass
class FakeAsyncLLM:
    """Emits one token per ``step_s`` for every running request, like a decode loop."""

    step_s: float = 0.001
    stop_after: dict[str, int] = field(default_factory=dict)  # prompt -> tokens before a stop
    started: list[tuple[str, int]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    errored: bool = False

    async def generate(self, prompt, sampling_params, request_id, *, priority=0):
        self.started.append((request_id, priority))
        max_tokens = sampling_params
        stop = self.stop_after.get(prompt)
        try:
            for i in range(max_tokens):
                await asyncio.sleep(self.step_s)
                if self.errored:
                    raise EngineDeadError("EngineCore died")
                if request_id in self.aborted:
                    return
                last = i == max_tokens - 1 or (stop is not None and i == stop - 1)
                reason = None if not last else ("stop" if stop is not None and i == stop - 1
                                                else "length")
                yield _Output([_Completion([100 + i], reason)], last)
                if last:
                    return
        finally:
            self.closed.append(request_id)

    async def abort(self, request_id):
        self.aborted.append(request_id)


def _engine(fake: FakeAsyncLLM) -> VLLMEngine:
    return VLLMEngine("7b", client=fake, sampling_params=lambda n: n, tokenizer=False)


def _actor(engine: VLLMEngine) -> LLMActor:
    actor = LLMActor("vllm-0", "llm-7b", engine="sim", max_batch_size=8, max_wait_ms=1)
    actor.engine = engine  # the real one needs a GPU; the loop is the same
    return actor


def _item(i: int, n: int, priority: int = 3, prompt: str | None = None) -> WorkItem:
    return WorkItem(f"t{i}", "summarization", priority, 1e18,
                    Payload(prompt=prompt or f"prompt {i}", max_new_tokens=n))


async def _collect(actor: LLMActor, items: list[WorkItem]) -> dict:
    out = {}
    async for batch in actor.execute(items):
        for c in batch:
            out[c.task_id] = c
    return out


def test_llm_actor_loop_runs_unchanged_over_vllm_streams():
    fake = FakeAsyncLLM()
    engine = _engine(fake)
    actor = _actor(engine)
    items = [_item(i, 5 + 3 * i, priority=1 + i % 4) for i in range(5)]
    done = asyncio.run(_collect(actor, items))
    assert sorted(done) == [f"t{i}" for i in range(5)]
    for i in range(5):
        c = done[f"t{i}"]
        assert c.ok and c.num_generated_tokens == 5 + 3 * i, c
        t = engine.telemetry(f"t{i}")
        assert t["num_generated_tokens"] == 5 + 3 * i and t["finish_reason"] == "length"
        assert t["ttft_s"] > 0 and t["tpot_s"] > 0
    # vLLM got the task's class as its priority (lower runs first in both).
    assert sorted(p for _, p in fake.started) == sorted(1 + i % 4 for i in range(5))
    assert engine._streams == {}


def test_a_stop_before_max_tokens_finishes_early():
    fake = FakeAsyncLLM(stop_after={"stops": 3})
    actor = _actor(_engine(fake))
    done = asyncio.run(_collect(actor, [_item(0, 10, prompt="stops"), _item(1, 6)]))
    assert done["t0"].ok and done["t0"].num_generated_tokens == 3
    assert done["t1"].ok and done["t1"].num_generated_tokens == 6


def test_abort_reaches_vllm_even_with_nothing_else_running():
    fake = FakeAsyncLLM(step_s=0.002)
    engine = _engine(fake)
    actor = _actor(engine)

    async def go():
        gen = actor.execute([_item(0, 10_000)])
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0.05)  # some tokens flow
        assert await actor.abort(["t0"]) == 1
        (c,) = await first
        assert not c.ok and c.error == "aborted"
        for _ in range(100):  # the abort reaches the engine within a step or two
            if fake.aborted:
                break
            await asyncio.sleep(0.002)
        return c
    c = asyncio.run(go())
    assert len(fake.aborted) == 1 and fake.aborted[0].startswith("t0#")
    assert fake.closed == fake.aborted  # the generate() stream was closed, not left to the GC
    assert engine.telemetry("t0")["finish_reason"].startswith("abort")
    assert 0 < c.num_generated_tokens < 10_000


def test_a_sequence_that_leaves_the_batch_is_aborted():
    fake = FakeAsyncLLM()
    engine = _engine(fake)
    a, b = Sequence("a", "pa", 2, 50), Sequence("b", "pb", 2, 50)

    async def go():
        await engine.step([a, b], 1)
        await engine.step([a], 1)  # b is gone (expired, cancelled)
        await asyncio.sleep(0.01)
    asyncio.run(go())
    assert [r.split("#")[0] for r in fake.aborted] == ["b"]
    assert a.num_generated >= 1


def test_a_retried_request_gets_a_fresh_stream():
    fake = FakeAsyncLLM()
    engine = _engine(fake)
    first, again = Sequence("t", "p", 1, 3), Sequence("t", "p", 1, 3)

    async def go():
        while not first.done:
            await engine.step([first], 1)
        while not again.done:
            await engine.step([again], 1)
    asyncio.run(go())
    ids = [r for r, _ in fake.started]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(r.startswith("t#") for r in ids)
    assert again.token_ids == first.token_ids == [100, 101, 102]


def test_engine_death_fails_the_batch_retryably_and_stays_dead():
    fake = FakeAsyncLLM(step_s=0.002)
    engine = _engine(fake)
    actor = _actor(engine)

    async def go():
        task = asyncio.ensure_future(_collect(actor, [_item(i, 1000) for i in range(3)]))
        await asyncio.sleep(0.03)
        fake.errored = True
        return await task
    done = asyncio.run(go())
    assert len(done) == 3
    for c in done.values():
        assert not c.ok and c.retryable and "dead" in c.error, c
    assert engine.dead
    with pytest.raises(RuntimeError, match="dead"):
        asyncio.run(engine.step([Sequence("x", "p", 1, 2)], 1))
