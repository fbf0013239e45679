"""DeadlineQueue: order (class, deadline, seq), removal, aging, compaction.

The aging rule under test, from the module docstring: the longest-waiting task of a MEDIUM or LOW
class has effective class ``max(HIGH, cls - floor(wait / aging_s))``; CRITICAL is never reached.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raysched.core import CoreTask, DeadlineQueue, Priority
from tests.builders import make_task

C, H, M, L = Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM, Priority.LOW


def task(tid: str, prio: Priority = M, deadline: float = 10.0) -> CoreTask:
    return make_task(task_id=tid, priority=prio, deadline_s=deadline)


def drain(q: DeadlineQueue, now_s: float) -> list[str]:
    out = []
    while (t := q.pop(now_s)) is not None:
        out.append(t.task_id)
    return out


# -- order ----------------------------------------------------------------------------------------


def test_empty_queue() -> None:
    q = DeadlineQueue()
    assert len(q) == 0
    assert not q
    assert q.peek(0.0) is None
    assert q.pop(0.0) is None
    assert q.remove("nope") is None
    assert "nope" not in q


def test_class_beats_deadline() -> None:
    q = DeadlineQueue(aging_s=None)
    q.push(task("low-early", L, 1.0), 1, 0.0)
    q.push(task("med", M, 2.0), 2, 0.0)
    q.push(task("high", H, 50.0), 3, 0.0)
    q.push(task("crit-late", C, 100.0), 4, 0.0)
    assert drain(q, 0.0) == ["crit-late", "high", "med", "low-early"]


def test_edf_inside_a_class() -> None:
    q = DeadlineQueue(aging_s=None)
    for i, d in enumerate([30.0, 10.0, 20.0, 5.0]):
        q.push(task(f"d{d:g}", H, d), i, 0.0)
    assert drain(q, 0.0) == ["d5", "d10", "d20", "d30"]


def test_seq_breaks_ties_not_push_order() -> None:
    q = DeadlineQueue(aging_s=None)
    q.push(task("b", H, 7.0), 20, 0.0)
    q.push(task("a", H, 7.0), 10, 0.0)
    q.push(task("c", H, 7.0), 30, 0.0)
    key, top = q.peek(0.0)
    assert top.task_id == "a" and key == (int(H), 7.0, 10)
    assert drain(q, 0.0) == ["a", "b", "c"]


@pytest.mark.parametrize("seed", range(5))
def test_total_order_matches_sorted_keys(seed: int) -> None:
    rng = random.Random(seed)
    q = DeadlineQueue(aging_s=None)
    keys = {}
    seqs = rng.sample(range(10_000), 300)
    for i, seq in enumerate(seqs):
        prio = rng.choice(list(Priority))
        deadline = rng.choice([1.0, 2.0, 3.0, rng.uniform(0, 100)])  # many deadline ties
        q.push(task(f"t{i}", prio, deadline), seq, rng.uniform(0, 50))
        keys[f"t{i}"] = (int(prio), deadline, seq)
    assert len(q) == 300
    assert drain(q, 1e9) == sorted(keys, key=keys.__getitem__)


def test_peek_does_not_remove() -> None:
    q = DeadlineQueue()
    q.push(task("a"), 1, 0.0)
    assert q.peek(0.0)[1].task_id == "a"
    assert q.peek(0.0)[1].task_id == "a"
    assert len(q) == 1 and "a" in q


def test_push_twice_is_refused() -> None:
    q = DeadlineQueue()
    q.push(task("a"), 1, 0.0)
    with pytest.raises(AssertionError):
        q.push(task("a"), 2, 0.0)


# -- remove / len / contains ----------------------------------------------------------------------


def test_remove_takes_the_task_out() -> None:
    q = DeadlineQueue(aging_s=None)
    a, b, c = task("a", H, 1.0), task("b", H, 2.0), task("c", L, 0.5)
    for i, t in enumerate([a, b, c]):
        q.push(t, i, 0.0)
    assert len(q) == 3 and "a" in q and "b" in q and "c" in q
    assert q.remove("a") is a
    assert "a" not in q and len(q) == 2
    assert q.remove("a") is None  # second removal is a no-op
    assert len(q) == 2
    assert q.depth_by_class() == {C: 0, H: 1, M: 0, L: 1}
    assert {t.task_id for t in q.tasks()} == {"b", "c"}
    assert drain(q, 0.0) == ["b", "c"]
    assert len(q) == 0 and "b" not in q


def test_remove_head_then_next_is_served() -> None:
    q = DeadlineQueue(aging_s=None)
    q.push(task("first", H, 1.0), 1, 0.0)
    q.push(task("second", H, 2.0), 2, 0.0)
    q.remove("first")
    assert q.peek(0.0)[1].task_id == "second"


def test_pop_returns_and_forgets() -> None:
    q = DeadlineQueue()
    q.push(task("a"), 1, 0.0)
    assert q.pop(0.0).task_id == "a"
    assert "a" not in q and len(q) == 0
    assert q.pop(0.0) is None


def test_views() -> None:
    q = DeadlineQueue()
    q.push(task("m1", M), 1, 3.0)
    q.push(task("m2", M), 2, 1.0)
    q.push(task("l1", L), 3, 2.0)
    assert q.arrival_s("m2") == 1.0
    assert q.seq("l1") == 3
    assert q.oldest_arrival_s(M) == 1.0
    assert q.oldest_arrival_s(L) == 2.0
    assert q.oldest_arrival_s(C) is None
    q.remove("m2")
    assert q.oldest_arrival_s(M) == 3.0
    assert q.depth_by_class()[M] == 1


# -- aging ----------------------------------------------------------------------------------------


def test_aging_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DeadlineQueue(aging_s=0.0)
    with pytest.raises(ValueError):
        DeadlineQueue(aging_s=-1.0)
    assert DeadlineQueue(aging_s=None).aging_s is None


def effective_key(t: CoreTask, seq: int, arrival: float, now: float, aging_s: float) -> tuple:
    """The docstring rule for the oldest task of its class: aged, it is keyed inside the class
    it reached by the earlier of its deadline and the moment it reached that class."""
    cls = int(t.priority)
    if cls > int(H):
        aged = max(int(H), cls - math.floor((now - arrival) / aging_s))
        if aged < cls:
            return (aged, min(t.deadline_s, arrival + (cls - aged) * aging_s), seq)
    return (cls, t.deadline_s, seq)


def test_low_task_aged_two_steps_beats_fresh_medium_and_later_high() -> None:
    aging = 10.0
    q = DeadlineQueue(aging_s=aging)
    old_low = task("old-low", L, 25.0)
    q.push(old_low, 1, 0.0)
    now = 2 * aging  # waited exactly 2 * aging_s -> LOW - 2 = HIGH
    q.push(task("fresh-med", M, 21.0), 2, now)      # earlier deadline, but lower class
    q.push(task("fresh-high", H, 30.0), 3, now)     # same class after aging, later deadline
    key, top = q.peek(now)
    assert top.task_id == "old-low"
    # Keyed by when it reached HIGH (20 s), not by its own later deadline (25 s).
    assert key == effective_key(old_low, 1, 0.0, now, aging) == (int(H), 20.0, 1)
    assert drain(q, now) == ["old-low", "fresh-high", "fresh-med"]


def test_aged_low_still_loses_to_high_due_before_it_reached_high() -> None:
    q = DeadlineQueue(aging_s=10.0)
    q.push(task("old-low", L, 25.0), 1, 0.0)
    q.push(task("high-early", H, 19.5), 2, 19.0)
    assert drain(q, 20.0) == ["high-early", "old-low"]


def test_aged_low_beats_high_due_after_it_reached_high() -> None:
    # A far deadline (or none) must not keep an aged task behind every fresh HIGH arrival.
    q = DeadlineQueue(aging_s=10.0)
    q.push(task("old-low", L, 600.0), 1, 0.0)
    q.push(task("best-effort-low", L, math.inf), 2, 0.5)
    q.push(task("high", H, 24.0), 3, 20.0)
    assert drain(q, 20.0) == ["old-low", "high", "best-effort-low"]
    q.push(task("best-effort-low", L, math.inf), 4, 0.5)
    q.push(task("high-2", H, 30.0), 5, 21.0)
    assert drain(q, 21.0) == ["best-effort-low", "high-2"]


def test_one_aging_step_is_not_enough_to_reach_high() -> None:
    q = DeadlineQueue(aging_s=10.0)
    q.push(task("low", L, 5.0), 1, 0.0)
    q.push(task("high", H, 100.0), 2, 19.9)
    q.push(task("med", M, 6.0), 3, 19.9)
    # LOW waited 19.9 s: floor(19.9 / 10) = 1 step -> MEDIUM; earliest deadline among MEDIUMs.
    key, top = q.peek(19.9)
    assert top.task_id == "high"
    q.pop(19.9)
    key, top = q.peek(19.9)
    assert top.task_id == "low" and key == (int(M), 5.0, 1)


def test_aging_boundary_is_floor_of_wait() -> None:
    q = DeadlineQueue(aging_s=10.0)
    q.push(task("m", M, 50.0), 1, 0.0)
    assert q.peek(9.999)[0] == (int(M), 50.0, 1)
    assert q.peek(10.0)[0] == (int(H), 10.0, 1)


def test_aging_never_reaches_critical() -> None:
    q = DeadlineQueue(aging_s=1.0)
    q.push(task("ancient-low", L, 0.5), 1, 0.0)
    q.push(task("ancient-med", M, 0.4), 2, 0.0)
    q.push(task("fresh-crit", C, 1e6), 3, 1e5)
    now = 1e5
    key, top = q.peek(now)
    assert top.task_id == "fresh-crit" and key[0] == int(C)
    q.pop(now)
    key, top = q.peek(now)
    assert key[0] == int(H)  # capped at HIGH, never CRITICAL
    assert drain(q, now) == ["ancient-med", "ancient-low"]


def test_medium_ages_one_step_to_high() -> None:
    q = DeadlineQueue(aging_s=5.0)
    q.push(task("med", M, 9.0), 1, 0.0)
    q.push(task("high", H, 10.0), 2, 5.0)
    assert drain(q, 5.0) == ["med", "high"]


def test_no_aging_when_disabled() -> None:
    q = DeadlineQueue(aging_s=None)
    q.push(task("low", L, 1.0), 1, 0.0)
    q.push(task("med", M, 1e9), 2, 1e9)
    assert q.peek(1e12)[0] == (int(M), 1e9, 2)
    assert drain(q, 1e12) == ["med", "low"]


def test_aging_applies_to_the_longest_waiting_task_of_a_class() -> None:
    q = DeadlineQueue(aging_s=10.0)
    q.push(task("low-young-early", L, 1.0), 1, 15.0)   # earliest LOW deadline, arrived late
    q.push(task("low-old", L, 99.0), 2, 0.0)           # waited longest
    q.push(task("med", M, 50.0), 3, 20.0)
    # at t=20: low-old aged 2 steps -> HIGH; low-young-early is not the oldest -> plain LOW
    assert drain(q, 20.0) == ["low-old", "med", "low-young-early"]


def test_aging_measured_from_arrival_passed_in() -> None:
    q = DeadlineQueue(aging_s=10.0)
    q.push(task("low", L, 1.0), 1, 100.0)
    q.push(task("high", H, 2.0), 2, 100.0)
    assert q.peek(105.0)[1].task_id == "high"   # not aged: waited 5 s since its arrival_s
    assert q.peek(120.0)[1].task_id == "low"    # aged to HIGH, earlier deadline


# -- compaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize("aging_s", [None, 3.0])
def test_compaction_after_many_removals_keeps_order(aging_s: float | None) -> None:
    rng = random.Random(7)
    q = DeadlineQueue(aging_s=aging_s)
    keys = {}
    for i in range(2000):
        prio = rng.choice([H, M, L])
        d = rng.uniform(0, 100)
        arrival = rng.uniform(0, 10)
        q.push(task(f"t{i}", prio, d), i, arrival)
        keys[f"t{i}"] = (prio, d, i, arrival)
    victims = rng.sample(sorted(keys), 1900)
    for tid in victims:
        assert q.remove(tid).task_id == tid
        del keys[tid]
    assert len(q) == 100
    assert all(tid in q for tid in keys)
    assert not any(tid in q for tid in victims)
    assert q.depth_by_class() == {c: sum(1 for k in keys.values() if k[0] is c) for c in Priority}
    # The dead entries must not pile up: compaction bounds garbage to live + 64 per class.
    for cls in Priority:
        live = q.depth_by_class()[cls]
        assert len(q._heaps[cls]) <= 2 * live + 65
        assert len(q._by_arrival[cls]) <= 2 * live + 65
    # Order afterwards equals the reference model's order.
    model = QueueModel(aging_s)
    for tid, (prio, d, seq, arrival) in keys.items():
        model.push(task(tid, prio, d), seq, arrival)
    now = 10.0
    expected = []
    while (t := model.pop(now)) is not None:
        expected.append(t)
    assert drain(q, now) == expected


# -- model-based ----------------------------------------------------------------------------------


class QueueModel:
    """Reference implementation of the documented order, by brute force."""

    def __init__(self, aging_s: float | None) -> None:
        self.aging_s = aging_s
        self.items: dict[str, tuple[CoreTask, int, float]] = {}

    def push(self, t: CoreTask, seq: int, arrival: float) -> None:
        self.items[t.task_id] = (t, seq, arrival)

    def remove(self, tid: str) -> bool:
        return self.items.pop(tid, None) is not None

    def best(self, now: float) -> tuple[tuple, str] | None:
        cands = []
        for cls in Priority:
            members = [v for v in self.items.values() if v[0].priority is cls]
            if not members:
                continue
            t, seq, _ = min(members, key=lambda v: (v[0].deadline_s, v[1]))
            cands.append(((int(cls), t.deadline_s, seq), t.task_id))
            if self.aging_s is not None and cls > H:
                t, seq, arrival = min(members, key=lambda v: (v[2], v[1]))
                cands.append((effective_key(t, seq, arrival, now, self.aging_s), t.task_id))
        return min(cands) if cands else None

    def pop(self, now: float) -> str | None:
        b = self.best(now)
        if b is None:
            return None
        del self.items[b[1]]
        return b[1]


OPS = st.lists(
    st.tuples(st.sampled_from(["push", "push", "push", "pop", "remove", "repush", "tick"]),
              st.integers(0, 3), st.integers(0, 6), st.integers(0, 10**6)),
    max_size=60,
)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, aging=st.sampled_from([None, 1.0, 2.5]))
def test_queue_matches_reference_model(ops: list, aging: float | None) -> None:
    """Random push / pop / remove / re-push (same seq and arrival, like a requeue) / clock ticks,
    checked against the brute-force model after every operation."""
    q = DeadlineQueue(aging_s=aging)
    model = QueueModel(aging)
    now = 0.0
    seq = 0
    meta: dict[str, tuple[CoreTask, int, float]] = {}   # every task ever pushed
    gone: list[str] = []                                # popped or removed, may come back
    for op, prio_i, dl_i, pick in ops:
        if op == "push":
            seq += 1
            t = task(f"t{seq}", list(Priority)[prio_i], float(dl_i))
            meta[t.task_id] = (t, seq, now)
            q.push(t, seq, now)
            model.push(t, seq, now)
        elif op == "pop":
            got = q.pop(now)
            want = model.pop(now)
            assert (got.task_id if got else None) == want
            if want is not None:
                gone.append(want)
        elif op == "remove":
            live = sorted(model.items)
            if live:
                tid = live[pick % len(live)]
                assert q.remove(tid) is meta[tid][0]
                model.remove(tid)
                gone.append(tid)
            else:
                assert q.remove("absent") is None
        elif op == "repush":
            if gone:
                tid = gone.pop(pick % len(gone))
                q.push(*meta[tid])
                model.push(*meta[tid])
        else:
            now += 0.5 * (dl_i + 1)
        assert len(q) == len(model.items)
        assert {t.task_id for t in q.tasks()} == set(model.items)
        assert q.depth_by_class() == {
            c: sum(1 for v in model.items.values() if v[0].priority is c) for c in Priority}
        want_best = model.best(now)
        got_best = q.peek(now)
        if want_best is None:
            assert got_best is None
        else:
            assert (got_best[0], got_best[1].task_id) == want_best
    expected = [model.pop(now) for _ in range(len(model.items))]
    assert drain(q, now) == expected


# -- regression: pushing a task back with its seq -------------------------------------------------
# Heap items are (deadline_s, seq, _Entry); a pop/remove leaves the dead item in the heap, and a
# requeue keeps the seq, so the two items tie and heapq falls through to comparing _Entry objects
# (a TypeError before _Entry got an ordering).


def test_repush_same_seq_after_pop() -> None:
    q = DeadlineQueue()
    t = task("a", H, 5.0)
    q.push(t, 1, 0.0)
    assert q.pop(0.0) is t
    q.push(t, 1, 0.0)  # a requeue keeps the first seq and arrival
    assert q.pop(0.0) is t


def test_repush_same_seq_after_remove() -> None:
    q = DeadlineQueue()
    t = task("a", L, 5.0)
    q.push(t, 1, 0.0)
    q.push(task("b", L, 9.0), 2, 0.0)
    assert q.remove("a") is t
    q.push(t, 1, 0.0)
    assert drain(q, 0.0) == ["a", "b"]


def test_guarded_class_order_serves_class_first_while_nothing_is_tight() -> None:
    q = DeadlineQueue(aging_s=None, ordering="guarded_class")
    # latest start = deadline - 0.1 s of service: slack of seconds against 4 x 0.1 s.
    q.push(task("med", M, 10.0), 1, 0.0, latest_start_s=9.9)
    q.push(task("crit", C, 60.0), 2, 0.0, latest_start_s=59.9)
    assert drain(q, 0.0) == ["crit", "med"]


def test_guarded_class_order_lets_tight_lower_class_work_go_first() -> None:
    q = DeadlineQueue(aging_s=None, ordering="guarded_class")
    q.push(task("high", H, 60.0), 1, 0.0, latest_start_s=59.9)
    q.push(task("med-tight", M, 1.2), 2, 0.0, latest_start_s=1.0)  # 0.2 s of service
    # At 0.5 s the MEDIUM task has 0.5 s of slack, under 4 x 0.2 s: it goes first.
    key, top = q.peek(0.5)
    assert top.task_id == "med-tight" and key[0] == int(M)
    assert drain(q, 0.5) == ["med-tight", "high"]
    # Two tight tasks: the higher class first.
    q.push(task("low-tight", L, 1.2), 3, 0.0, latest_start_s=1.0)
    q.push(task("med-tight-2", M, 1.3), 4, 0.0, latest_start_s=1.1)
    assert drain(q, 0.9) == ["med-tight-2", "low-tight"]


def test_guarded_class_order_lets_work_aged_to_high_pass_tight_work_once_per_aging_s() -> None:
    q = DeadlineQueue(aging_s=1.0, ordering="guarded_class")
    # Three LOW tasks with far deadlines, waiting since 0; a MEDIUM stream whose first task is
    # always tight (0.2 s of slack before its latest start against 4 x 0.1 s of service).
    for i in range(3):
        q.push(task(f"low-{i}", L, 600.0), i, 0.0, latest_start_s=599.9)
    seq = 10

    def tight_medium(now_s: float) -> None:
        nonlocal seq
        seq += 1
        q.push(task(f"med-{seq}", M, now_s + 0.3), seq, now_s, latest_start_s=now_s + 0.2)

    popped = []
    for step in range(60):  # one start every 0.1 s for 6 s
        now_s = 0.1 * step
        tight_medium(now_s)
        got = q.pop(now_s)
        assert got is not None
        popped.append((round(now_s, 1), got.task_id))
    lows = [(t, tid) for t, tid in popped if tid.startswith("low")]
    # At 1 s the oldest LOW task is MEDIUM, which tight MEDIUM work may pass; at 2 s it is
    # HIGH and goes first; the next ones then go one per aging_s, not all at once.
    assert lows == [(2.0, "low-0"), (3.0, "low-1"), (4.0, "low-2")]


def test_guarded_class_order_lets_tight_critical_work_pass_aged_work() -> None:
    q = DeadlineQueue(aging_s=1.0, ordering="guarded_class")
    q.push(task("low", L, 600.0), 1, 0.0, latest_start_s=599.9)
    q.push(task("crit", C, 5.2), 2, 5.0, latest_start_s=5.1)
    assert drain(q, 5.0) == ["crit", "low"]


def test_guarded_class_order_keeps_a_tight_aged_task_in_its_own_class() -> None:
    # A LOW task aged up to HIGH whose own deadline is near (0.2 s of slack before its latest
    # start against 4 x 0.1 s of service) competes as tight LOW work: tight MEDIUM work first.
    q = DeadlineQueue(aging_s=1.0, ordering="guarded_class")
    q.push(task("low", L, 5.5), 1, 0.0, latest_start_s=5.4)
    q.push(task("med", M, 5.5), 2, 5.0, latest_start_s=5.3)
    assert drain(q, 5.2) == ["med", "low"]
