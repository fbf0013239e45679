"""Garbage-collector settings for the scheduler's process.

A scheduler holding 10^5 queued tasks tracks about a million objects, and CPython's full
(generation 2) collection walks all of them: about 100 ms with every task waiting
(``benchmarks/overhead.py`` part (a) saw 122 ms at 10^5 queued). The tasks themselves are freed
by reference counting when they end; the collector is only needed for cycles, which the
tasks' objects do not form. So the process collects its young generations less often than
CPython's default (``YOUNG_THRESHOLD``) and now and then moves everything that has survived
them into the permanent generation (``gc.freeze``), which full collections skip: they then
walk only what arrived since.
"""

from __future__ import annotations

import gc

# Seconds between freezes in a long-running scheduler (its metrics loop calls ``freeze``). A
# freeze costs a young collection (about a millisecond) and stops a full collection from ever
# finding more than a second's worth of new objects; at 10 s, 10^5 tasks a second would leave
# enough for a 100 ms pause (``benchmarks/overhead.py`` part (a)).
FREEZE_PERIOD_S = 1.0
# Allocations (less deallocations) between young collections; CPython's default is 700. Every
# task's objects live for a while (queued, then in flight), so at 700 a young collection runs
# every few tasks and walks the objects of the tasks decided since the last: at 10^5 queued x
# 1,000 workers that cost about 1.5 µs of a decision's 23 (``benchmarks/overhead.py`` part (a)).
# Pauses are fewer and no longer: in 20,000 decisions there (the deep backlog), 700 gave 62
# collections, 51 ms in all, the longest 27 ms (a full one); 20,000 gave one, of 7.7 ms.
YOUNG_THRESHOLD = 20_000


def configure() -> None:
    """Set the young generation's threshold for a scheduler process (the older generations'
    stay as they are), then freeze what exists."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    freeze()


def freeze() -> int:
    """Collect the young generations, then freeze what is left; returns how many objects the
    permanent generation now holds. Cycles among frozen objects are never collected: the young
    collection just before keeps those to ones that lived through it."""
    gc.collect(1)
    gc.freeze()
    return gc.get_freeze_count()
