"""Requests to drop tasks that a worker has not started, kept until the task comes.

A scheduler's abort (a cancel, or a task taken back for more urgent work) can reach a worker
before the task does: the call carrying it is still on its way, or queued behind the batch the
worker is running. Each worker keeps the request as a mark, and a mark stops only an item the
scheduler made before the request (``WorkItem.sent_s`` against the request's ``issued_s``, both
on the scheduler's clock): one left by an abort that came too late (its task was running, or
done) does not stop the next attempt, or a later task given the same id.
"""

from __future__ import annotations

import threading

from raysched.core.protocol import WorkItem

# Marks a worker keeps: far more than the tasks one worker is ever sent ahead, so a mark goes
# only long after its task could have arrived.
ABORT_MARKS_KEPT = 100_000


class AbortMarks:
    """Task id -> when the scheduler asked to drop it, oldest first, at most ``kept``. Safe to
    use from a worker's control thread and its work thread at once."""

    def __init__(self, kept: int = ABORT_MARKS_KEPT) -> None:
        self.kept = kept
        self._marks: dict[str, float] = {}
        self._lock = threading.Lock()

    def mark(self, task_ids: list[str], issued_s: float) -> int:
        """Mark ``task_ids`` as asked to drop at ``issued_s``; returns how many were new."""
        marks = self._marks
        new = 0
        with self._lock:
            for t in task_ids:
                new += t not in marks
                marks.pop(t, None)  # re-inserted as the newest
                marks[t] = issued_s
            while len(marks) > self.kept:
                del marks[next(iter(marks))]
        return new

    def stops(self, item: WorkItem) -> bool:
        """Whether ``item`` is to be dropped unstarted: a mark made after it was sent. The mark
        is used up either way."""
        if not self._marks:  # the common case, read without the lock
            return False
        with self._lock:
            mark_s = self._marks.pop(item.task_id, None)
        return mark_s is not None and mark_s > item.sent_s
