"""The bursty long-prompt workload matches the figures it was built from, deterministically."""

from __future__ import annotations

import statistics
from collections import Counter

import numpy as np
import pytest

from raysched.bench.workloads import (
    BURSTY_PROMPT_CAP_TOKENS,
    DEFAULT_CLUSTER,
    build_workload,
    bursty,
    bursty_rows,
)
from raysched.core.types import Priority

N = 20_000


@pytest.fixture(scope="module", params=[0, 1, 2])
def rows(request):
    return bursty_rows(N, seed=request.param)


def test_prompt_lengths(rows):
    prompts = np.array([r[1] for r in rows])
    assert np.median(prompts) == pytest.approx(1_500, rel=0.05)
    assert prompts.mean() == pytest.approx(2_000, rel=0.05)
    assert prompts.max() == BURSTY_PROMPT_CAP_TOKENS == 7_400


def test_answer_lengths(rows):
    answers = np.array([r[2] for r in rows])
    p50, p90, p99 = np.percentile(answers, [50, 90, 99])
    assert p50 == pytest.approx(13, abs=1)
    assert p90 == pytest.approx(55, rel=0.1)
    assert p99 == pytest.approx(250, rel=0.15)
    assert answers.min() >= 1


def test_arrivals_come_in_bursts(rows):
    times = np.array([r[0] for r in rows])
    gaps = np.diff(times)
    assert times[0] == 0.0 and (gaps >= 0).all()
    assert gaps.std() / gaps.mean() == pytest.approx(13, abs=2.5)
    per_second = np.bincount(times.astype(int))
    # Tens of requests in a busy second, and most seconds quiet.
    assert np.percentile(per_second[per_second > 0], 90) >= 20
    assert (per_second == 0).mean() > 0.8


def test_same_seed_same_rows_and_another_seed_differs():
    assert bursty_rows(2_000, seed=4) == bursty_rows(2_000, seed=4)
    assert bursty_rows(2_000, seed=4) != bursty_rows(2_000, seed=5)


def test_classes_are_mixed_and_mostly_high_on_7b():
    tasks, _ = bursty(N, 1.0, seed=0)
    counts = Counter((t.task.priority, t.task.pool) for t in tasks)
    high_7b = counts[(Priority.HIGH, "llm-7b")] / len(tasks)
    assert 0.85 <= high_7b <= 0.95
    assert {p for p, _ in counts} == {Priority.HIGH, Priority.MEDIUM, Priority.LOW}
    assert all(t.task.deadline_s > t.arrival_s for t in tasks)


def test_speedup_compresses_time_and_scales_the_offered_load():
    real, load_1 = bursty(3_000, 1.0, seed=0)
    fast, load_4 = bursty(3_000, 4.0, seed=0)
    assert load_4 == pytest.approx(4 * load_1)
    assert [t.arrival_s / 4 for t in real] == pytest.approx([t.arrival_s for t in fast])
    # Deadlines keep their slack: a request's deadline is relative to its arrival.
    slack = [t.task.deadline_s - t.arrival_s for t in real]
    assert statistics.fmean(slack) == pytest.approx(
        statistics.fmean(t.task.deadline_s - t.arrival_s for t in fast))


def test_bench_selects_it_by_name():
    tasks, meta = build_workload("bursty", 1_000, 0, 4.0, 1.0, DEFAULT_CLUSTER)
    assert len(tasks) == 1_000
    assert meta["workload"] == "bursty long prompts" and meta["time_compression"] == 4.0
    assert meta["busiest_pool_utilization"] > 0
