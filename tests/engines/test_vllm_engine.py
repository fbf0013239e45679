"""The vLLM engine on a real GPU. Skipped, with the reason, without CUDA or without vllm.

The model is a small random Llama the test builds and saves (head size 64, which vLLM's
attention kernels support), so nothing is downloaded; set ``RAYSCHED_VLLM_TEST_MODEL`` to a model
directory or id to run the same checks on a real model.
"""

from __future__ import annotations

import asyncio
import os

import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch", reason="the vLLM engine needs torch with CUDA",
                            exc_type=ImportError)
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU is visible: the vLLM engine tests need one", allow_module_level=True)
pytest.importorskip("vllm", reason="vllm is not installed (pip install '.[vllm]' on a GPU node)",
                    exc_type=ImportError)

from actors.engines import make_engine, real_engines_available
from actors.engines.base import Sequence


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    named = os.environ.get("RAYSCHED_VLLM_TEST_MODEL")
    if named:
        return named
    from actors.engines.hf import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("vllm-tiny"), hidden_size=256,
                                num_heads=4, num_kv_heads=4, intermediate_size=512,
                                max_position_embeddings=2048))


@pytest.fixture(scope="module")
def loop():
    # AsyncLLM binds its output handler to the loop it first runs on: keep one for the module.
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(model):
    e = make_engine("vllm", model, tensor_parallel_size=1, max_model_len=2048,
                    gpu_memory_utilization=0.3, dtype="float16", enforce_eager=True)
    yield e
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


def test_vllm_is_a_real_engine_here():
    assert "vllm" in real_engines_available()


def test_generates_with_per_request_limits_and_telemetry(loop, engine):
    seqs = [Sequence(f"r{i}", f"the market risk report {i}", 8, n, priority=1 + i % 4)
            for i, n in enumerate([1, 5, 17, 40])]
    _drive(loop, engine, seqs)
    for s in seqs:
        assert 1 <= s.num_generated <= s.max_new_tokens
        assert s.num_generated == s.max_new_tokens or s.finished_early
        t = engine.telemetry(s.request_id)
        assert t["ttft_s"] > 0 and t["num_generated_tokens"] == s.num_generated
        if s.num_generated > 1:
            assert t["tpot_s"] > 0
    assert engine.simulated is False and engine.max_context_tokens == 2048


def test_abort_stops_the_request_in_vllm(loop, engine):
    long, short = Sequence("long", "abort me", 3, 1500), Sequence("short", "keep me", 3, 30)
    _drive(loop, engine, [long, short], abort_after=(long, 3))
    t = engine.telemetry("long")
    assert t["finish_reason"].startswith("abort") and t["num_generated_tokens"] < 1500
    assert engine.telemetry("short")["finish_reason"] in ("length", "stop")
