"""The deadline queue: tasks waiting for one pool, in a total, deterministic order.

Order is the key ``(effective class, deadline_s, seq)``: a higher class first, earliest deadline
first inside a class, arrival order to break ties. ``seq`` is unique, so two tasks never compare
equal and a run is reproducible.

Starvation control is aging, and it is explicit: a MEDIUM or LOW task that has waited
``aging_s`` is treated as one class higher, two classes after ``2 * aging_s``, and so on, but
never higher than HIGH. Inside the class it reached, an aged task's key is the earlier of its own
deadline and the moment it reached that class, so it goes before work of that class due later.
CRITICAL work therefore always goes first, and a stream of HIGH work cannot hold LOW work (best
effort included) back for longer than ``2 * aging_s`` plus one service time. Aging applies to
the longest-waiting task of each class (it is the one that has aged most).

``guarded_class`` (the ``raysched`` policy) is ``class_deadline`` with a deadline guard: when
the first task of some class is getting tight (less slack before its latest start than
``TIGHT_FACTOR`` best-case services, ``deadline_s - latest_start_s``), the tight task of the
highest such class goes first, even before higher classes whose work has slack to spare. A
CRITICAL arrival still overtakes queued work with time to spare, and a MEDIUM task about to miss
is not held back behind HIGH work that could wait: class order spends slack, it does not waste
deadlines. The guard does not undo aging: once per ``aging_s``, a task aged up to HIGH whose
own deadline is not near goes before tight work of HIGH and lower classes (tight CRITICAL work
still goes first), or a saturating stream whose first task is always tight would hold it for as
long as the stream lasts. Once per ``aging_s``, not always: a steady flow of aged work would
otherwise take a saturated pool from the deadlines it can still meet.

Other orderings serve the baseline policies on the same structure: ``class_arrival`` (static
priority classes, FIFO inside), ``deadline`` (plain EDF, classes ignored) and ``arrival`` (FIFO).

Structure: per class, one heap keyed by ``(deadline_s, seq)``, and the class's tasks in arrival
order for aging (``_ArrivalOrder``: a deque, as tasks arrive in clock order, so a push and the
oldest task cost O(1) rather than a second heap's O(log n)).
Removal (pop, cancel, expiry) is lazy: an entry is marked dead and left where it is, so
push, pop and remove are O(log n) amortised and a decision looks at a constant number of heads.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator

from raysched.core.types import CoreTask, Priority

_CLASSES: tuple[Priority, ...] = tuple(Priority)
# Aged work may reach HIGH at most: CRITICAL is never shared.
_AGING_CEILING = Priority.HIGH
_AGED_CLASSES: tuple[Priority, ...] = tuple(c for c in _CLASSES if c > _AGING_CEILING)
# The search for aged tasks is skipped only until this long before the oldest could have aged:
# the float sum and the floor division that counts aging steps may differ in the last place
# (2e-7 s at today's epoch seconds).
_AGE_CHECK_SLACK_S = 1e-3


# A task is tight when its slack before its latest start is under this many best-case services.
# Measured on the shared conversation trace at loads 0.3-1.0: at 1 and 2, aged lower-class work
# cost MEDIUM deadlines that EDF meets; from 4 on, every class stays at or above EDF there.
TIGHT_FACTOR = 4.0

ORDERINGS = ("class_deadline", "guarded_class", "class_arrival", "deadline", "arrival")


class _Entry:
    __slots__ = ("arrival_s", "cls", "dead", "key_s", "latest_start_s", "seq", "task")

    # A requeued task's new entry has the same (deadline, seq) as its dead old one; heap ties
    # then fall through to the entries, which are never ordered among themselves.
    def __lt__(self, other: _Entry) -> bool:
        return False

    def __init__(self, task: CoreTask, seq: int, arrival_s: float, cls: Priority,
                 key_s: float, latest_start_s: float) -> None:
        self.task = task
        self.latest_start_s = latest_start_s
        self.seq = seq
        self.arrival_s = arrival_s
        self.cls = cls  # the class it is ordered in (one class for class-blind orderings)
        self.key_s = key_s  # deadline or arrival, by the ordering
        # Removed from the queue; its heap and arrival-order places go when they are reached.
        self.dead = False


QueueKey = tuple[int, float, int]


def _is_tight(entry: _Entry, now_s: float) -> bool:
    """Less slack before its latest start than ``TIGHT_FACTOR`` best-case services."""
    return (entry.latest_start_s - now_s
            < TIGHT_FACTOR * (entry.task.deadline_s - entry.latest_start_s))


class _ArrivalOrder:
    """One class's entries by ``(arrival_s, seq)``: a deque in push order, which is arrival order
    for fresh tasks (each arrives at the clock's time, which moves on), beside a heap for the few
    pushed out of order (a requeued task keeps its first arrival; a wall clock stepped back).
    Removal is lazy, as in the queue's heaps."""

    __slots__ = ("fifo", "out_of_order")

    def __init__(self) -> None:
        self.fifo: deque[_Entry] = deque()
        self.out_of_order: list[tuple[float, int, _Entry]] = []

    def __len__(self) -> int:
        return len(self.fifo) + len(self.out_of_order)

    def push(self, e: _Entry) -> None:
        fifo = self.fifo
        if fifo:
            last = fifo[-1]
            if last.arrival_s > e.arrival_s or (last.arrival_s == e.arrival_s
                                                and last.seq > e.seq):
                heapq.heappush(self.out_of_order, (e.arrival_s, e.seq, e))
                return
        fifo.append(e)

    def oldest(self) -> _Entry:
        """The first live entry; the class must have one."""
        fifo, heap = self.fifo, self.out_of_order
        while fifo and fifo[0].dead:
            fifo.popleft()
        while heap and heap[0][2].dead:
            heapq.heappop(heap)
        if not heap:
            return fifo[0]
        if not fifo:
            return heap[0][2]
        a, b = fifo[0], heap[0][2]
        return a if (a.arrival_s, a.seq) < (b.arrival_s, b.seq) else b

    def compact(self) -> None:
        """Drop the dead entries (order kept): O(entries)."""
        self.fifo = deque(e for e in self.fifo if not e.dead)
        self.out_of_order = [t for t in self.out_of_order if not t[2].dead]
        heapq.heapify(self.out_of_order)


class DeadlineQueue:
    """Tasks of one pool waiting for a free slot."""

    def __init__(self, aging_s: float | None = 30.0, ordering: str = "class_deadline") -> None:
        if aging_s is not None and aging_s <= 0:
            raise ValueError("aging_s must be positive or None")
        if ordering not in ORDERINGS:
            raise ValueError(f"unknown ordering {ordering!r}; known: {ORDERINGS}")
        self._guarded = ordering == "guarded_class"
        self._by_class = ordering.startswith("class_") or self._guarded
        self._by_deadline = ordering in ("class_deadline", "deadline", "guarded_class")
        # Aging is a notion between classes: a class-blind order has nothing to age into.
        self.aging_s = aging_s if self._by_class else None
        # Per real class in arrival order (for shedding the newest low-class task), and per
        # tenant (for the per-tenant cap), whatever the ordering.
        self._tenant_depth: dict[str, int] = {}
        self._heaps: dict[Priority, list[tuple[float, int, _Entry]]] = {c: [] for c in _CLASSES}
        self._by_arrival: dict[Priority, _ArrivalOrder] = {c: _ArrivalOrder() for c in _CLASSES}
        # Live entries per class ordered in (the one dict per task id: a queue of 10^5 tasks
        # pays a cache miss per dict it touches), so rebuilding one class's heaps touches
        # only that class.
        self._members: dict[Priority, dict[str, _Entry]] = {c: {} for c in _CLASSES}
        self._n = 0
        # By a class order the class ordered in is the real one: the same dicts serve.
        self._by_real = (self._members if self._by_class
                         else {c: {} for c in _CLASSES})
        self._overtook_s = -float("inf")  # when an aged task last went before tight work
        # No task of a class that ages can have waited ``aging_s`` before this moment (a lower
        # bound: the oldest of each such class plus ``aging_s``, lowered by a push), so the
        # search for aged tasks is skipped until then.
        self._age_check_s = float("inf")

    def __len__(self) -> int:
        return self._n

    def __contains__(self, task_id: object) -> bool:
        return isinstance(task_id, str) and self._find(task_id) is not None

    def _find(self, task_id: str, priority: Priority | None = None) -> _Entry | None:
        """The live entry of ``task_id``; ``priority``, its class, where the caller knows it."""
        if priority is not None:
            return self._members[priority if self._by_class else Priority.CRITICAL].get(task_id)
        for members in self._members.values():
            entry = members.get(task_id)
            if entry is not None:
                return entry
        return None

    def push(self, task: CoreTask, seq: int, arrival_s: float,
             latest_start_s: float = float("inf")) -> None:
        """Queue ``task``; ``seq`` must be unique (a requeued task keeps its first one).

        ``latest_start_s``: the last moment it may start and still meet its deadline at best
        (infinite when unknown); the guarded ordering reads its slack from it.
        """
        cls = task.priority if self._by_class else Priority.CRITICAL
        key_s = task.deadline_s if self._by_deadline else arrival_s
        entry = _Entry(task, seq, arrival_s, cls, key_s, latest_start_s)
        if self._members[cls].setdefault(task.task_id, entry) is not entry:
            raise AssertionError(f"task {task.task_id} is queued twice")
        self._n += 1
        if not self._by_class:
            self._by_real[task.priority][task.task_id] = entry
        self._tenant_depth[task.tenant] = self._tenant_depth.get(task.tenant, 0) + 1
        heapq.heappush(self._heaps[cls], (key_s, seq, entry))
        self._by_arrival[cls].push(entry)
        if self.aging_s is not None and cls > _AGING_CEILING:
            ages_s = arrival_s + self.aging_s - _AGE_CHECK_SLACK_S
            if ages_s < self._age_check_s:
                self._age_check_s = ages_s

    def remove(self, task_id: str, priority: Priority | None = None) -> CoreTask | None:
        """Take a task out wherever it is (cancel, expiry); None when it is not queued.
        ``priority``: its class, where the caller knows it (one lookup instead of four)."""
        entry = self._find(task_id, priority)
        return None if entry is None else self._drop(entry)

    def _drop(self, entry: _Entry) -> CoreTask:
        """Take out a live entry."""
        task_id = entry.task.task_id
        self._n -= 1
        entry.dead = True
        cls = entry.cls
        if not self._by_class:
            del self._by_real[entry.task.priority][task_id]
        left = self._tenant_depth[entry.task.tenant] - 1
        if left:
            self._tenant_depth[entry.task.tenant] = left
        else:
            del self._tenant_depth[entry.task.tenant]
        members = self._members[cls]
        del members[task_id]
        # Dead entries leave a heap only when they reach its head; rebuild a heap that is
        # mostly dead so removals cannot grow memory without bound. A rebuild costs the class's
        # size and happens once per that many removals: amortised O(1). Each heap is rebuilt on
        # its own: tasks leave by deadline, so the arrival order gathers the dead ones.
        live = len(members) + 64
        if len(self._heaps[cls]) > 2 * live:
            self._heaps[cls] = [(e.key_s, e.seq, e) for e in members.values()]
            heapq.heapify(self._heaps[cls])
        arrivals = self._by_arrival[cls]  # len() inlined: once per removal
        if len(arrivals.fifo) + len(arrivals.out_of_order) > 2 * live:
            arrivals.compact()
        return entry.task

    def peek(self, now_s: float) -> tuple[QueueKey, CoreTask] | None:
        """The task that would be popped at ``now_s``, with its effective key."""
        top = self._select(now_s)
        return None if top is None else (top[0], top[1])

    def _select(self, now_s: float) -> tuple[QueueKey, CoreTask, bool] | None:
        """``peek``, and whether the task is an aged one going before tight work."""
        if self._guarded:
            tight = self._tightest(now_s)
            if tight is not None:
                # An aged task that reached the top class it may reach, and whose own deadline
                # is not near, goes before tight work that is not CRITICAL, once per
                # ``aging_s``: a stream whose first task is always tight (a saturating one
                # with short deadlines) would otherwise hold it for as long as the stream
                # lasts. Once per ``aging_s``: a steady flow of aged work would take a
                # saturated pool from the deadlines it can still meet (on the conversation
                # trace at 1.3x load it cost MEDIUM work half its deadlines). Not when it is
                # tight itself: it then competes as tight work of its class, as it would
                # without aging (letting it pass cost LOW work deadlines on the same trace at
                # full load: started that late, a long answer mostly misses). Below the top it
                # is work of the class it reached, which tight work may pass.
                if (tight.cls >= _AGING_CEILING and self.aging_s is not None
                        and now_s - self._overtook_s >= self.aging_s):
                    aged = min((a for a in self._aged(now_s) if a[0][0] == _AGING_CEILING
                                and not _is_tight(a[1], now_s)),
                               default=None, key=lambda a: a[0])
                    if aged is not None:
                        return aged[0], aged[1].task, True
                return (int(tight.cls), tight.key_s, tight.seq), tight.task, False
        top = self._peek_ordered(now_s)
        return None if top is None else (top[0], top[1], False)

    def _peek_ordered(self, now_s: float) -> tuple[QueueKey, CoreTask] | None:
        """The first task by the ordering's key, aging included."""
        best: tuple[QueueKey, _Entry] | None = None
        for cls in _CLASSES:
            if self._members[cls]:
                # Classes come in order, so a later class's own head never goes first; only
                # an aged task of a later class can, and none ages past _AGING_CEILING.
                head = self._head(self._heaps[cls])
                best = ((int(cls), head.key_s, head.seq), head)
                break
        if best is None:
            return None
        if self.aging_s is not None and best[0][0] >= _AGING_CEILING:
            for aged in self._aged(now_s):
                if aged[0] < best[0]:
                    best = aged
        return best[0], best[1].task

    def _aged(self, now_s: float) -> list[tuple[QueueKey, _Entry]]:
        """The oldest task of each class that ages (below ``_AGING_CEILING``) and has waited
        ``aging_s`` or more, keyed in the class it reached."""
        out: list[tuple[QueueKey, _Entry]] = []
        if self.aging_s is None or now_s < self._age_check_s:
            return out
        check_s = float("inf")
        for cls in _AGED_CLASSES:
            if not self._members[cls]:
                continue
            oldest = self._by_arrival[cls].oldest()
            check_s = min(check_s, oldest.arrival_s + self.aging_s - _AGE_CHECK_SLACK_S)
            steps = int((now_s - oldest.arrival_s) // self.aging_s)
            if steps > 0:
                aged = max(int(_AGING_CEILING), int(cls) - steps)
                # Inside the class it reached, an aged task is keyed by the moment it got
                # there, not by its own (far) deadline: work of that class whose deadline is
                # later no longer goes first, so a saturating stream cannot hold it.
                promoted_s = oldest.arrival_s + (int(cls) - aged) * self.aging_s
                out.append(((aged, min(oldest.key_s, promoted_s), oldest.seq), oldest))
        self._age_check_s = check_s
        return out

    def _tightest(self, now_s: float) -> _Entry | None:
        """The first task of the highest class whose first task is getting tight (less slack
        before its latest start than ``TIGHT_FACTOR`` best-case services), or None."""
        for cls in _CLASSES:
            if not self._members[cls]:
                continue
            head = self._head(self._heaps[cls])
            if _is_tight(head, now_s):
                return head
        return None

    def pop(self, now_s: float) -> CoreTask | None:
        """Remove and return the first task at ``now_s``; None when empty."""
        if not self._guarded and (self.aging_s is None or now_s < self._age_check_s):
            # Nothing has aged: the first task is the head of the first class with work.
            for cls in _CLASSES:
                if self._members[cls]:
                    return self._drop(self._head(self._heaps[cls]))
            return None
        top = self._select(now_s)
        if top is None:
            return None
        if top[2]:
            self._overtook_s = now_s
        self.remove(top[1].task_id, top[1].priority)
        return top[1]

    def arrival_s(self, task_id: str) -> float:
        return self._entry(task_id).arrival_s

    def seq(self, task_id: str) -> int:
        return self._entry(task_id).seq

    def _entry(self, task_id: str) -> _Entry:
        entry = self._find(task_id)
        if entry is None:
            raise KeyError(task_id)
        return entry

    def depth(self, cls: Priority) -> int:
        return len(self._by_real[cls])

    def depth_by_class(self) -> dict[Priority, int]:
        return {c: len(m) for c, m in self._by_real.items()}

    def tenant_depth(self, tenant: str) -> int:
        return self._tenant_depth.get(tenant, 0)

    def newest(self, cls: Priority) -> CoreTask | None:
        """The most recently queued task of ``cls`` (the one to shed first), or None."""
        members = self._by_real[cls]
        return members[next(reversed(members))].task if members else None

    def oldest_arrival_s(self, cls: Priority) -> float | None:
        """Arrival of the longest-waiting task of ``cls`` (of any class, for class-blind orders)."""
        if not self._by_real[cls]:
            return None
        by_arrival = self._by_arrival[cls if self._by_class else Priority.CRITICAL]
        return by_arrival.oldest().arrival_s

    def tasks(self) -> Iterator[CoreTask]:
        return (e.task for members in self._members.values() for e in members.values())

    def _head(self, heap: list[tuple[float, int, _Entry]]) -> _Entry:
        """The first live entry of a non-empty class heap, dropping dead ones on the way."""
        while heap[0][2].dead:
            heapq.heappop(heap)
        return heap[0][2]
