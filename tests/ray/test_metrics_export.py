"""The scheduler's metrics: outcomes are exported at each flush (the dispatch loop's, every few
ms), counters summed per tag set. Ray's metric objects are real; their export calls are recorded
on the way (reading them back would need a Prometheus scrape)."""

from __future__ import annotations

import pytest

from raysched.core.types import Outcome, Priority, Status

pytestmark = pytest.mark.ray


class _Calls:
    def __init__(self, real):
        self.real, self.calls = real, []

    def inc(self, value, tags):
        self.calls.append((value, tags))
        self.real.inc(value, tags)

    def observe(self, value, tags):
        self.calls.append((value, tags))
        self.real.observe(value, tags)


def test_outcomes_are_exported_at_flush_with_counts_summed(ray_session) -> None:
    from raysched.metrics import SchedulerMetrics

    m = SchedulerMetrics()
    m.results, m.latency, m.deadline_misses = (_Calls(m.results), _Calls(m.latency),
                                               _Calls(m.deadline_misses))
    for i in range(3):
        m.record(Outcome(f"ok{i}", Status.COMPLETED, submit_s=0.0, end_s=0.01 * (i + 1),
                         deadline_s=1.0, priority=Priority.HIGH, pool="cpu"))
    m.record(Outcome("late", Status.EXPIRED, reason="x", end_s=2.0, deadline_s=1.0,
                     priority=Priority.LOW, pool="cpu"))
    assert m.results.calls == [] and m.latency.calls == []  # nothing before the flush
    m.flush()
    assert sorted(m.results.calls, key=str) == sorted(
        [(3, {"priority": "HIGH", "status": "completed"}),
         (1, {"priority": "LOW", "status": "expired"})], key=str)
    assert [round(v, 6) for v, _ in m.latency.calls] == [10.0, 20.0, 30.0]
    assert m.deadline_misses.calls == [(1, {"priority": "LOW"})]
    m.flush()  # nothing new: nothing exported again
    assert len(m.results.calls) == 2
