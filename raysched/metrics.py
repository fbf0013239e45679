"""Export the scheduler's state through Ray's own metrics (Prometheus, the Ray dashboard)."""

from __future__ import annotations

from collections import Counter

from ray.util import metrics

from raysched.core.types import CoreStats, Outcome, Priority, Status

# Histogram buckets in ms: from a fast CPU classification to a long agent run.
LATENCY_BUCKETS_MS = [5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000]


class SchedulerMetrics:
    def __init__(self) -> None:
        self.queue_depth = metrics.Gauge(
            "raysched_queue_depth", "Tasks waiting, per pool and priority class.",
            tag_keys=("pool", "priority"))
        self.latency = metrics.Histogram(
            "raysched_task_latency_ms", "Submit-to-result latency of completed tasks.",
            boundaries=LATENCY_BUCKETS_MS, tag_keys=("pool", "priority"))
        self.results = metrics.Counter(
            "raysched_results", "Tasks ended, per status.", tag_keys=("priority", "status"))
        self.deadline_misses = metrics.Counter(
            "raysched_deadline_misses", "Tasks that ended without meeting their deadline.",
            tag_keys=("priority",))
        self.utilization = metrics.Gauge(
            "raysched_worker_utilization", "Fraction of time a worker had work in flight.",
            tag_keys=("pool", "worker"))
        self._ended: list[Outcome] = []

    def record(self, outcome: Outcome) -> None:
        """Note a task that ended; exported at the next ``flush`` (the dispatch loop's, every
        few ms, so the calls into Ray's metrics are not on the way from a result to its
        driver)."""
        self._ended.append(outcome)

    def pending(self) -> bool:
        """Whether outcomes wait for the next ``flush``."""
        return bool(self._ended)

    def flush(self) -> None:
        """Export what ended since the last flush: the counters once per tag set, with the
        counts since then; each completed task's latency in the histogram."""
        if not self._ended:
            return
        ended, self._ended = self._ended, []
        results: Counter[tuple[str, str]] = Counter()
        misses: Counter[str] = Counter()
        for o in ended:
            prio = o.priority.name
            results[prio, o.status.value] += 1
            if o.status is Status.COMPLETED:
                self.latency.observe((o.end_s - o.submit_s) * 1e3, {"pool": o.pool,
                                                                    "priority": prio})
            if not o.deadline_met:
                misses[prio] += 1
        for (prio, status), n in results.items():
            self.results.inc(n, {"priority": prio, "status": status})
        for prio, n in misses.items():
            self.deadline_misses.inc(n, {"priority": prio})

    def publish(self, stats: CoreStats) -> None:
        for pool, p in stats.pools.items():
            for prio in Priority:
                self.queue_depth.set(p.queued[prio.name], {"pool": pool, "priority": prio.name})
        for worker, w in stats.workers.items():
            self.utilization.set(w.utilization, {"pool": w.pool, "worker": worker})
