"""The discrete-event simulator: queueing theory, determinism, load accounting, trace replay."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from raysched.bench.sim_mode import run_sim
from raysched.bench.workloads import (
    DEFAULT_CLUSTER,
    FINANCIAL_MIX,
    PoolSpec,
    financial_mix,
    load_trace,
    read_trace,
    trace_rule,
)
from raysched.core.policies import build_core
from raysched.core.roofline import STEP_OVERHEAD_S
from raysched.core.types import CoreTask, Priority
from raysched.sim import SimCPUWorker, SimLLMWorker, SimTask, Simulator

ROOT = Path(__file__).resolve().parents[2]
# The first 500 requests of the Azure trace, shipped with the tests (tests/data/README.md).
TRACE_SAMPLE = ROOT / "tests" / "data" / "AzureLLMInferenceTrace_conv_head500.csv"
# The whole trace, where the shared folder beside the repository has it.
TRACE_FULL = ROOT.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"


def erlang_c_wait_s(c: int, lam: float, mu: float) -> float:
    """Mean wait in queue of M/M/c (Erlang C)."""
    a = lam / mu
    rho = a / c
    head = sum(a ** k / math.factorial(k) for k in range(c))
    tail = a ** c / math.factorial(c) / (1 - rho)
    return tail / (head + tail) / (c * mu - lam)


@pytest.mark.parametrize("rho", [0.5, 0.8, 0.9])
def test_fifo_matches_erlang_c(rho):
    c, mean_service_s = 4, 0.01
    lam = rho * c / mean_service_s
    rng = random.Random(7)

    def tasks(n):
        t = 0.0
        for i in range(n):
            t += rng.expovariate(lam)
            yield SimTask(t, CoreTask(f"t{i}", "k", Priority.HIGH, 1e12, "cpu"),
                          cpu_service_s=rng.expovariate(1 / mean_service_s))

    sim = Simulator(build_core("fifo"), {f"w{i}": ("cpu", SimCPUWorker(f"w{i}"))
                                         for i in range(c)})
    run = sim.run(tasks(200_000))
    waits = [o.start_s - o.submit_s for o in run.outcomes]
    expected = erlang_c_wait_s(c, lam, 1 / mean_service_s)
    assert len(waits) == 200_000
    assert sum(waits) / len(waits) == pytest.approx(expected, rel=0.05)


def test_same_seed_same_run():
    tasks = financial_mix(3_000, load=0.9, seed=5)
    a, ra = run_sim("raysched", tasks, DEFAULT_CLUSTER, seed=5)
    b, rb = run_sim("raysched", financial_mix(3_000, load=0.9, seed=5), DEFAULT_CLUSTER, seed=5)
    assert ra == rb
    assert a["goodput"] == b["goodput"]


@pytest.mark.parametrize("policy", ["fifo", "round_robin", "least_loaded", "pow2",
                                    "pow2_priority", "priority", "edf", "raysched",
                                    "oracle_lct"])
def test_every_policy_ends_every_task_once(policy):
    tasks = financial_mix(2_000, load=0.95, seed=1)
    entry, records = run_sim(policy, tasks, DEFAULT_CLUSTER)
    assert sorted(r.task_id for r in records) == sorted(t.task.task_id for t in tasks)
    assert sum(entry["results"].values()) == len(tasks)
    if policy in ("fifo", "round_robin", "least_loaded", "pow2", "pow2_priority", "priority"):
        assert entry["results"]["expired"] == entry["results"]["rejected"] == 0


def test_deadline_aware_policies_beat_fifo_on_critical_and_high():
    tasks = financial_mix(10_000, load=0.9, seed=2)
    fifo, _ = run_sim("fifo", tasks, DEFAULT_CLUSTER)
    ours, _ = run_sim("raysched", tasks, DEFAULT_CLUSTER)
    for name in ("CRITICAL", "HIGH"):
        ours_met = ours["per_priority"][name]["deadline_met"]
        assert ours_met > fifo["per_priority"][name]["deadline_met"]
    assert ours["goodput"] > fifo["goodput"]


def test_offered_load_is_what_the_workers_see():
    # At 50% offered load nothing queues for long, so busy time / span is close to the target.
    cluster = (PoolSpec("cpu", 4), PoolSpec("llm-7b", 2, "7b", 16),
               PoolSpec("llm-70b", 1, "70b", 8))
    tasks = financial_mix(20_000, load=0.5, seed=3, cluster=cluster)
    entry, _ = run_sim("fifo", tasks, cluster)
    cpu_busy_s = sum(u * entry["span_s"] for w, u in entry["utilization"].items()
                     if w.startswith("cpu"))
    horizon_s = tasks[-1].arrival_s - tasks[0].arrival_s
    assert cpu_busy_s / (4 * horizon_s) == pytest.approx(0.5, abs=0.03)


def test_llm_worker_batches_continuously_with_whole_prefill_stalls():
    w = SimLLMWorker("w", "7b", max_batch_size=4, chunked_prefill=False)
    long = SimTask(0.0, CoreTask("long", "k", Priority.LOW, 1e9, "llm-7b", 100, 500),
                   true_new_tokens=500)
    short = SimTask(0.0, CoreTask("short", "k", Priority.HIGH, 1e9, "llm-7b", 100, 10),
                    true_new_tokens=10)
    w.add(long, 0.0)
    w.add(short, 0.5)  # joins the running batch
    t = w.next_event_s()
    done = w.pop_finished(t)
    assert [f.task_id for f in done] == ["short"] and done[0].batch_size == 2
    step = w.roofline.decode_step_s([110, 110])
    assert t - 0.5 == pytest.approx(w.roofline.prefill_s(100) + 10 * step, rel=0.05)
    assert w.pop_finished(w.next_event_s())[0].task_id == "long"


def test_llm_worker_chunked_prefill_mixes_the_prompt_with_the_batchs_decodes():
    # vLLM V1: the short request's 100-token prompt runs in one step beside the long one's
    # decode token, and that step samples its first token; nine decode steps of two follow.
    w = SimLLMWorker("w", "7b", max_batch_size=4)
    long = SimTask(0.0, CoreTask("long", "k", Priority.LOW, 1e9, "llm-7b", 100, 500),
                   true_new_tokens=500)
    short = SimTask(0.0, CoreTask("short", "k", Priority.HIGH, 1e9, "llm-7b", 100, 10),
                    true_new_tokens=10)
    w.add(long, 0.0)
    w.add(short, 0.5)
    t = w.next_event_s()
    done = w.pop_finished(t)
    assert [f.task_id for f in done] == ["short"] and done[0].batch_size == 2
    r = w.roofline
    mixed_s = max(r.decode_step_s([150]) - STEP_OVERHEAD_S, r.prefill_s(101)) + STEP_OVERHEAD_S
    assert t - 0.5 == pytest.approx(mixed_s + 9 * r.decode_step_s([155, 105]), rel=0.02)
    assert w.pop_finished(w.next_event_s())[0].task_id == "long"


def test_chunked_prefill_splits_long_prompts_by_the_token_budget():
    # Two 3,000-token prompts at once under a 2,048-token budget: 6,000 tokens in three
    # compute-bound steps. The first prompt ends in step 2 (2,048 + 952), the second in step 3;
    # each step is the prefill time of its tokens plus the step overhead.
    w = SimLLMWorker("w", "7b", max_batch_size=4, max_num_batched_tokens=2_048)
    for i in range(2):
        w.add(SimTask(0.0, CoreTask(f"p{i}", "k", Priority.HIGH, 1e9, "llm-7b", 3_000, 1),
                      true_new_tokens=1), 0.0)
    r = w.roofline
    t0 = w.next_event_s()
    assert [f.task_id for f in w.pop_finished(t0)] == ["p0"]
    assert t0 == pytest.approx(2 * STEP_OVERHEAD_S + r.prefill_s(4_096), rel=1e-6)
    t1 = w.next_event_s()
    assert [f.task_id for f in w.pop_finished(t1)] == ["p1"]
    assert t1 - t0 == pytest.approx(STEP_OVERHEAD_S + r.prefill_s(6_000 - 4_096), rel=1e-6)


def test_chunked_prefill_keeps_decoding_through_a_long_prompt():
    # A 7,000-token prompt arrives while a 6-token answer decodes. With chunks of 512 tokens
    # the answer gains a token every (about 50 ms) step and ends long before the prompt is
    # prefilled; with a stall it waits for the whole prefill (about 650 ms). The long prompt's
    # first token comes at about the same time either way (chunks only add step overheads).
    def finish_s(chunked: bool) -> dict[str, float]:
        w = SimLLMWorker("w", "7b", max_batch_size=4, chunked_prefill=chunked,
                         max_num_batched_tokens=512)
        w.add(SimTask(0.0, CoreTask("short", "k", Priority.HIGH, 1e9, "llm-7b", 50, 6),
                      true_new_tokens=6), 0.0)
        w.add(SimTask(0.0, CoreTask("long", "k", Priority.LOW, 1e9, "llm-7b", 7_000, 1),
                      true_new_tokens=1), 0.02)
        ends = {}
        while (t := w.next_event_s()) is not None:
            ends.update({f.task_id: t for f in w.pop_finished(t)})
        return ends

    chunked, stalled = finish_s(True), finish_s(False)
    prefill_s = SimLLMWorker("w", "7b").roofline.prefill_s(7_000)
    assert chunked["short"] < 0.02 + prefill_s / 2 < stalled["short"]
    assert chunked["long"] == pytest.approx(stalled["long"], rel=0.05)


def test_replica_queue_in_class_order_runs_urgent_work_first():
    w = SimCPUWorker("w", queue_order="class_arrival")
    for i, prio in enumerate([Priority.LOW, Priority.LOW, Priority.HIGH, Priority.CRITICAL]):
        w.add(SimTask(0.0, CoreTask(f"t{i}", "k", prio, 1e9, "cpu"), cpu_service_s=0.1), 0.0)
    order = []
    while (t := w.next_event_s()) is not None:
        order += [f.task_id for f in w.pop_finished(t)]
    assert order == ["t0", "t3", "t2", "t1"]  # the running head is not displaced


@pytest.mark.parametrize("trace, n_rows", [
    pytest.param(TRACE_SAMPLE, 500, id="sample"),
    pytest.param(TRACE_FULL, 2_000, id="full", marks=pytest.mark.skipif(
        not TRACE_FULL.exists(), reason=f"the full trace is not at {TRACE_FULL}")),
])
def test_trace_replay_maps_rows_to_pools_and_load(trace, n_rows):
    rows = read_trace(trace, limit=n_rows)
    assert len(rows) == n_rows
    assert rows[0][0] == 0.0 and all(b[0] >= a[0] for a, b in zip(rows, rows[1:], strict=False))
    tasks, compress = load_trace(trace, load=0.8, limit=n_rows)
    assert len(tasks) == n_rows and compress > 0
    for st, (_, ctx, gen) in zip(tasks, rows, strict=True):
        prio, pool = trace_rule(ctx, gen)
        assert st.task.priority is prio and st.task.pool == pool
        assert st.true_new_tokens == gen <= st.task.max_new_tokens
        assert st.task.deadline_s > st.arrival_s
    entry, _ = run_sim("raysched", tasks, DEFAULT_CLUSTER)
    assert sum(entry["results"].values()) == n_rows


def test_financial_mix_sizes_are_the_missions():
    """At its mean sizes each kind takes, on an idle worker of its pool, what the mission says:
    classification 10-20 ms on CPU, summaries 100-500 ms on 7B, reasoning 1-5 s on 70B, agent
    runs 5-30 s."""
    mission_s = {"classification": (0.010, 0.020), "summarization": (0.1, 0.5),
                 "reasoning": (1.0, 5.0), "agent": (5.0, 30.0)}
    presets = {p.name: p.preset for p in DEFAULT_CLUSTER}
    for spec in FINANCIAL_MIX:
        if spec.on_cpu:
            idle_s = sum(spec.cpu_service_ms) / 2e3
        else:
            prior = SimLLMWorker("probe", presets[spec.pool], 1).prior
            idle_s = prior.service_s(round(sum(spec.prompt_tokens) / 2),
                                     round(sum(spec.true_new_tokens) / 2), 1)
        lo, hi = mission_s[spec.kind]
        assert lo <= idle_s <= hi, (spec.kind, idle_s)
        assert spec.sla_ms / 1e3 > idle_s


def test_simulated_engine_prior_runs_on_its_own_clock():
    from actors.engines.simulated import SimulatedEngine

    real, fast = SimulatedEngine("7b"), SimulatedEngine("7b", time_scale=0.1)
    expected_s = 0.1 * real.prior().service_s(500, 40, 4)
    assert fast.prior().service_s(500, 40, 4) == pytest.approx(expected_s)


def test_simulated_engine_chunks_cost_the_same_as_single_steps():
    """Running several decode steps per sleep (small time scales) must not make a long
    generation cheaper than stepping one token at a time."""
    import asyncio

    from actors.engines.base import Sequence
    from actors.engines.simulated import SimulatedEngine

    def run(max_steps: int) -> float:
        engine = SimulatedEngine("7b", time_scale=1e-6)  # sleeps are negligible
        seqs = [Sequence(f"s{i}", "x", 500, 300) for i in range(4)]
        while not all(s.done for s in seqs):
            asyncio.run(engine.step(seqs, max_steps))
        return engine.busy_model_s

    assert run(1_000) == pytest.approx(run(1), rel=1e-9)
