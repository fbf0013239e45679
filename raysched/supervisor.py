"""Pool supervision without Ray: how many workers each pool is owed, and when to stop trying.

A pool wants ``wanted`` workers. Every worker the scheduler starts is ``starting`` until it
registers (``live``) or fails to start. Failed starts are retried with exponential backoff;
after ``max_start_failures`` failures in a row the supervisor stops trying, and a pool left
with no live worker and none starting is *down*: the scheduler then refuses its tasks at once
with the reason (``SchedulerCore.pool_down``) instead of letting them wait for a worker that
will not come. A worker that registers resets the count, and a pool that gets one back serves
again.

The clock is injected, so the tests drive it without Ray; the scheduler actor asks
``to_start`` what to spawn and reports what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Backoff between failed starts: 0.5 s, 1 s, 2 s, ... up to 10 s. A worker that dies while it
# starts (a bad node, a missing package) usually fails again at once, so the first retries are
# quick and later ones leave the cluster room to recover.
START_BACKOFF_S = 0.5
MAX_START_BACKOFF_S = 10.0


@dataclass(slots=True)
class _Pool:
    wanted: int
    live: set[str] = field(default_factory=set)
    starting: dict[str, float] = field(default_factory=dict)  # worker_id -> since_s
    failures: int = 0  # failed starts in a row
    retry_at_s: float = 0.0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class PoolHealth:
    """One pool's workers at a moment: ``wanted``, ``live`` and ``starting`` counts, the oldest
    start still waiting (seconds), failed starts in a row with the last error, and ``down``:
    empty while the pool can serve or a worker is coming, else why it cannot."""

    wanted: int
    live: int
    starting: int
    oldest_start_s: float
    start_failures: int
    last_error: str
    down: str


class PoolSupervisor:
    """Keeps each pool at its wanted size, within a bounded budget of failed starts."""

    def __init__(self, clock: Callable[[], float], max_start_failures: int = 3) -> None:
        self.clock = clock
        self.max_start_failures = max_start_failures
        self._pools: dict[str, _Pool] = {}

    def add_pool(self, pool: str, wanted: int) -> None:
        self._pools[pool] = _Pool(wanted)

    def to_start(self) -> list[str]:
        """Pools owed a start now, one entry per worker to start (a pool may appear twice).

        Nothing while a pool waits out its backoff or has spent its failure budget.
        """
        now = self.clock()
        out: list[str] = []
        for name, p in self._pools.items():
            if p.failures >= self.max_start_failures or now < p.retry_at_s:
                continue
            out.extend([name] * max(0, p.wanted - len(p.live) - len(p.starting)))
        return out

    def starting(self, pool: str, worker_id: str) -> None:
        self._pools[pool].starting[worker_id] = self.clock()

    def registered(self, pool: str, worker_id: str) -> None:
        p = self._pools[pool]
        p.starting.pop(worker_id, None)
        p.live.add(worker_id)
        p.failures, p.last_error = 0, ""

    def start_failed(self, pool: str, worker_id: str, error: str) -> str:
        """A worker died before it registered. Returns why the pool is now down, or "" when
        it can still serve or another start is coming."""
        p = self._pools[pool]
        p.starting.pop(worker_id, None)
        p.failures += 1
        p.last_error = error
        p.retry_at_s = self.clock() + min(MAX_START_BACKOFF_S,
                                          START_BACKOFF_S * 2 ** (p.failures - 1))
        return self.down_reason(pool)

    def lost(self, pool: str, worker_id: str) -> None:
        """A live worker is gone; ``to_start`` owes the pool a replacement."""
        self._pools[pool].live.discard(worker_id)

    def down_reason(self, pool: str) -> str:
        """Why ``pool`` cannot serve (no live worker, none starting, no start left to try), or
        "" when it can or soon may."""
        p = self._pools[pool]
        if p.wanted == 0 and not p.live:
            return "it has no workers (0 replicas fit this cluster or were asked for)"
        if p.live or p.starting or p.failures < self.max_start_failures:
            return ""
        return (f"no worker is running and {p.failures} starts in a row failed "
                f"(last: {p.last_error})")

    def settled(self, pool: str) -> bool:
        """The pool can serve (a live worker) or is down: either way, nothing to wait for."""
        return bool(self._pools[pool].live) or bool(self.down_reason(pool))

    def health(self, pool: str) -> PoolHealth:
        p = self._pools[pool]
        now = self.clock()
        oldest_s = max((now - s for s in p.starting.values()), default=0.0)
        return PoolHealth(wanted=p.wanted, live=len(p.live), starting=len(p.starting),
                          oldest_start_s=oldest_s, start_failures=p.failures,
                          last_error=p.last_error, down=self.down_reason(pool))

    @property
    def pools(self) -> list[str]:
        return list(self._pools)
