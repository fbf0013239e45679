"""A write-ahead record of the scheduler's promises: accepted tasks and undelivered results.

Every accepted task is appended when it is admitted, every start when it is sent to a worker,
every Result when it is produced, and every acknowledgement when a driver has received its
results. After the scheduler actor restarts, a replay yields the tasks that were accepted and
never ended (to run again, or to report), how often each had been sent to a worker (a run of it
may have happened: its Result counts it in ``attempts``), and the results no driver has
acknowledged (to deliver again). Drivers drop duplicates by task id, so a task's Result reaches
its driver exactly once even though a task may run twice.

Why a file on the head node rather than Ray's GCS key-value store: a GCS put is a round trip
per call (about a millisecond here), while an append to a local file costs microseconds and
batches naturally with the scheduler's own batches. The scheduler actor runs on the head node and
restarts there, and the file lives in the Ray session's directory, so a new Ray session (a new
cluster) never replays the previous one's tasks.

The log never holds a Ray object ref (a payload or an output that went by reference): pickled
outside Ray's own serialization, a ref pins its object for the life of the process. It keeps
the ref's place (``ByRef`` with ``ref=None``), so a replay knows that value is not in the log.

Format: length-prefixed pickled records ``(op, ...)``. Records are pickled with cloudpickle
because payloads may carry Python callables (a CPU task's ``fn``), which plain pickle refuses
when they are lambdas or defined in ``__main__``. A torn last record (a crash mid-write) ends the
replay, and the replay cuts it off so that later appends are not hidden behind it.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from raysched.core.protocol import ByRef

log = logging.getLogger("raysched")

_LEN = struct.Struct("<I")
COMPACT_BYTES = 64 * 1024 * 1024

# task_id -> (client_id, Task, deadline_s) and task_id -> (client_id, Result).
Pending = dict[str, tuple[str, Any, float]]
Unacked = dict[str, tuple[str, Any]]


class TaskLog:
    """An append-only file of ``accepted``, ``started``, ``ended`` and ``acked`` records; see
    the module."""

    def __init__(self, path: str | Path, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the actor's life
        # Results and acknowledgements come one at a time; they are written as one record per
        # flush (one pickling pass, not one per result).
        self._ended: list[tuple[str, Any]] = []
        self._acked: list[str] = []
        self._accepted: list[tuple[str, list[tuple[Any, float]]]] = []
        self._started: list[str] = []
        # Starts logged of the tasks not yet ended (a compaction writes them again).
        self._runs: dict[str, int] = {}

    # -- writing -----------------------------------------------------------------------------

    def accepted(self, client_id: str, entries: list[tuple[Any, float]], *,
                 later: bool = False) -> None:
        """Task records admitted for ``client_id``, each with its absolute deadline; with
        ``later``, written at the next flush (before that flush's results)."""
        self._accepted.append((client_id, entries))
        if not later:
            self._write_accepted()

    def _write_accepted(self) -> None:
        for client_id, entries in self._accepted:
            self._append(("A", client_id,
                          [(_without_refs(t, "payload"), d) for t, d in entries]))
        self._accepted = []

    def started(self, task_ids: list[str]) -> None:
        """Tasks sent to a worker to run; written at flush. After a restart they count as
        runs of the task (``replay``): a crash within a flush period of a start loses it."""
        self._started.extend(task_ids)
        runs = self._runs
        for task_id in task_ids:
            runs[task_id] = runs.get(task_id, 0) + 1

    def ended(self, results: list[tuple[str, Any]]) -> None:
        """``(client_id, result record)`` pairs produced (not yet acknowledged); written at
        flush."""
        self._ended.extend((c, _without_refs(r, "output")) for c, r in results)
        for _, r in results:
            if not isinstance(r.output, ByRef):  # one by reference runs again after a restart
                self._runs.pop(r.task_id, None)

    def acked(self, task_ids: list[str]) -> None:
        """Results the drivers have received; written at flush."""
        self._acked.extend(task_ids)

    def buffered(self) -> bool:
        """Whether accepted tasks, results or acknowledgements wait for the next ``flush``."""
        return bool(self._accepted or self._ended or self._acked or self._started)

    def flush(self) -> None:
        """Write what is buffered (accepted tasks first, then results and acknowledgements),
        then hand the file to the OS (and to the disk too with ``fsync``)."""
        self._write_accepted()
        if self._started:
            self._append(("S", self._started))
            self._started = []
        if self._ended:
            self._append(("E", self._ended))
            self._ended = []
        if self._acked:
            self._append(("K", self._acked))
            self._acked = []
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        self._file.close()

    def _append(self, record: tuple[Any, ...]) -> None:
        data = cloudpickle.dumps(record)
        self._file.write(_LEN.pack(len(data)) + data)

    # -- reading -----------------------------------------------------------------------------

    def _records(self) -> Iterator[tuple[Any, ...]]:
        """Every whole record in order; a torn tail is cut off the file once it is reached."""
        self.flush()
        whole_bytes = 0
        with open(self.path, "rb") as f:
            while True:
                head = f.read(_LEN.size)
                if len(head) < _LEN.size:
                    break
                size = _LEN.unpack(head)[0]
                data = f.read(size)
                if len(data) < size:
                    break
                try:
                    record = cloudpickle.loads(data)
                except (pickle.UnpicklingError, EOFError, ValueError) as exc:
                    log.warning("task log %s: unreadable record at byte %d (%r); replay stops "
                                "there", self.path, whole_bytes, exc)
                    break
                whole_bytes = f.tell()
                yield record
        if whole_bytes < self.path.stat().st_size:
            log.warning("task log %s: dropping a torn tail after byte %d", self.path, whole_bytes)
            # The file is open for appending: new records go after the cut, where replay reads.
            os.truncate(self.path, whole_bytes)

    def replay(self) -> tuple[Pending, Unacked, dict[str, int]]:
        """``(pending, unacked, runs)``: task_id -> (client_id, Task, deadline_s) for accepted
        tasks with no Result, task_id -> (client_id, Result) for results not acknowledged, and
        task_id -> times a pending task was sent to a worker (absent: never)."""
        pending: Pending = {}
        unacked: Unacked = {}
        runs: dict[str, int] = {}
        for rec in self._records():
            if rec[0] == "A":
                for task, deadline_s in rec[2]:
                    pending[task.task_id] = (rec[1], task, deadline_s)
            elif rec[0] == "S":
                for task_id in rec[1]:
                    runs[task_id] = runs.get(task_id, 0) + 1
            elif rec[0] == "E":
                for client_id, result in rec[1]:
                    if isinstance(result.output, ByRef):
                        continue  # its output lived in the old process: the task runs again
                    pending.pop(result.task_id, None)
                    unacked[result.task_id] = (client_id, result)
            elif rec[0] == "K":
                for task_id in rec[1]:
                    unacked.pop(task_id, None)
                    # Its driver has the result: a task whose output went by reference (its
                    # result skipped above) does not run again either.
                    pending.pop(task_id, None)
        self._runs = {t: n for t, n in runs.items() if t in pending}
        return pending, unacked, dict(self._runs)

    def needs_compaction(self) -> bool:
        """Whether the file has grown past ``COMPACT_BYTES``."""
        return self._file.tell() >= COMPACT_BYTES

    def compact(self, pending: Pending, unacked: Unacked) -> None:
        """Rewrite the log as just what is still owed (written aside, then renamed over it)."""
        self.flush()
        tmp = self.path.with_suffix(".tmp")
        by_client: dict[str, list[tuple[Any, float]]] = {}
        for client_id, task, deadline_s in pending.values():
            by_client.setdefault(client_id, []).append((_without_refs(task, "payload"),
                                                        deadline_s))
        records: list[tuple[Any, ...]] = [("A", c, e) for c, e in by_client.items()]
        self._runs = {t: n for t, n in self._runs.items() if t in pending}
        records.append(("S", [t for t, n in self._runs.items() for _ in range(n)]))
        records.append(("E", [(c, _without_refs(r, "output")) for c, r in unacked.values()]))
        with open(tmp, "wb") as f:
            for record in records:
                data = cloudpickle.dumps(record)
                f.write(_LEN.pack(len(data)) + data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the actor's life


def _without_refs(record: Any, field_name: str) -> Any:
    """``record`` with its ``field_name`` (a ``ByRef``) keeping the size but not the ref."""
    value = getattr(record, field_name)
    if isinstance(value, ByRef) and value.ref is not None:
        return replace(record, **{field_name: ByRef(None, value.size_bytes)})
    return record
