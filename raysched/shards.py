"""Several scheduler actors over one cluster's pools (``SchedulerConfig.shards``).

One scheduler actor carries a few thousand tasks a second (``benchmarks/overhead.py``); past
that, its event loop is the limit. With ``shards=N``, ``connect`` starts N scheduler actors
(``name``, ``name-shard1``, ...), each running its share of every pool's replicas, and returns
a ``ShardedClient``: it sends each task to one shard, chosen among those that run the task's
pool by a hash of the task id, so the same id always reaches the same shard (a task submitted
twice is still accepted once). Each shard keeps its own queue, task log and learned models:
class order, deadlines and preemption hold within a shard, not across shards.

``merge_stats`` adds the shards' ``stats()`` up into one view, as ``raysched status`` shows it.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from raysched.client import Client, TaskHandle, as_completed_results, task_id_list
from raysched.errors import SubmitError
from raysched.models import Result, Task


def shard_for(task_id: str, serving: list[int]) -> int:
    """The shard of ``serving`` (the shards that run the task's pool) a task id goes to: a
    hash that is the same in every process (unlike ``hash``)."""
    return serving[zlib.crc32(task_id.encode()) % len(serving)]


class ShardedClient:
    """A driver's connection to every shard of one scheduler; used like a ``Client``."""

    def __init__(self, clients: list[Client], owns_ray: bool = False) -> None:
        self.clients = clients
        self._owns_ray = owns_ray
        self.pools: dict[str, str] = {}
        self._serving: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(clients):
            self.pools.update(c.pools)
            for pool in c.pools:
                self._serving[pool].append(i)
        self.notes = [f"shard {i}: {n}" for i, c in enumerate(clients) for n in c.notes]

    @property
    def actor(self) -> Any:
        """Shard 0's actor handle."""
        return self.clients[0].actor

    def validate(self, task: Task | Mapping[str, Any]) -> Task:
        """A ``Task`` checked against the pools of all the shards (raises ``ValidationError``)."""
        if isinstance(task, Task) and len(task.pools) == 1 and task.pool in self.pools:
            return self.clients[self._serving[task.pool][0]].validate(task)
        return Task.model_validate(task.model_dump() if isinstance(task, Task) else task,
                                   context={"pools": self.pools})

    def submit(self, task: Task | Mapping[str, Any], *, block: bool = True,
               timeout: float | None = None) -> TaskHandle:
        return self.submit_many([task], block=block, timeout=timeout)[0]

    def run(self, task: Task | Mapping[str, Any], timeout: float | None = None) -> Result:
        """``Client.run`` on the shard the task goes to."""
        checked = self.validate(task)
        return self.clients[shard_for(checked.id, self._shards_for(checked))].run(checked,
                                                                                  timeout)

    def submit_many(self, tasks: Iterable[Task | Mapping[str, Any]], *, block: bool = True,
                    timeout: float | None = None) -> list[TaskHandle]:
        """``Client.submit_many`` over the shards: every task is validated first, then each
        shard gets its tasks in one call per ``SUBMIT_CHUNK``; handles come back in order.
        When a shard's call fails, ``SubmitError.submitted`` holds the handles that went."""
        checked = [self.validate(t) for t in tasks]
        ids = [t.id for t in checked]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"task ids given twice in one call: {twice[:5]}; nothing submitted")
        by_shard: dict[int, list[int]] = defaultdict(list)
        for i, t in enumerate(checked):
            by_shard[shard_for(t.id, self._shards_for(t))].append(i)
        handles: list[TaskHandle | None] = [None] * len(checked)
        for shard, where in by_shard.items():
            try:
                got = self.clients[shard].submit_many([checked[i] for i in where], block=block,
                                                      timeout=timeout)
            except SubmitError as exc:
                sent = [h for h in handles if h is not None] + exc.submitted
                raise SubmitError(f"shard {shard}: {exc}", submitted=sent) from exc
            except Exception as exc:
                sent = [h for h in handles if h is not None]
                raise SubmitError(f"shard {shard}: {type(exc).__name__}: {exc}",
                                  submitted=sent) from exc
            for i, h in zip(where, got, strict=True):
                handles[i] = h
        return [h for h in handles if h is not None]

    def _shards_for(self, task: Task) -> list[int]:
        """The shards that run every pool ``task`` may run on (routing across pools happens
        inside one shard); ``ValueError`` when no shard runs them all."""
        serving = [k for k in self._serving[task.pool]
                   if all(k in self._serving[p] for p in task.pools)]
        if not serving:
            where = {p: self._serving[p] for p in task.pools}
            raise ValueError(f"task {task.id!r}: no shard runs all of requirements.pools "
                             f"{list(task.pools)} (shards by pool: {where}); nothing submitted")
        return serving

    def map(self, tasks: Iterable[Task | Mapping[str, Any]], timeout: float | None = None
            ) -> Iterator[Result]:
        """Submit ``tasks`` and yield their Results in completion order."""
        yield from as_completed_results(self.submit_many(tasks), timeout)

    async def submit_async(self, task: Task | Mapping[str, Any]) -> Result:
        import asyncio

        handle = await asyncio.to_thread(self.submit, task)
        result: Result = await handle
        return result

    def cancel(self, task_ids: list[str]) -> list[bool]:
        """Cancel on the shard that holds each task (asked of every shard when this client
        did not submit it); True for each task a call ended. ``TypeError`` as
        ``Client.cancel``."""
        task_ids = task_id_list(task_ids)
        ended = [False] * len(task_ids)
        asks: dict[int, list[int]] = defaultdict(list)  # shard -> positions in task_ids
        for i, task_id in enumerate(task_ids):
            owners = [k for k, c in enumerate(self.clients) if c.holds(task_id)]
            for k in owners or range(len(self.clients)):
                asks[k].append(i)
        for k, where in asks.items():  # one call per shard
            for i, done in zip(where, self.clients[k].cancel([task_ids[i] for i in where]),
                               strict=True):
                ended[i] = ended[i] or done
        return ended

    def stats(self) -> dict[str, Any]:
        """Every shard's ``stats()`` added up (``merge_stats``)."""
        return merge_stats([c.stats() for c in self.clients])

    def outstanding(self) -> int:
        return sum(c.outstanding() for c in self.clients)

    def close(self) -> None:
        """Close every shard's client (``Client.close``); shut the embedded Ray down if this
        client started it."""
        for c in self.clients:
            c.close()
        if self._owns_ray:
            import ray

            ray.shutdown()

    def __enter__(self) -> ShardedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SUMMED_POOL_FIELDS = ("workers", "in_flight", "free_slots", "backlog_s")


def merge_stats(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``stats()`` view of several shards': counts and queues added up, workers and learned
    models listed together, notes prefixed by their shard, a pool's utilization the mean over
    all its workers and its oldest wait the longest; ``shards`` holds each shard's own view."""
    if len(shards) == 1:
        return shards[0]
    out: dict[str, Any] = {
        "notes": [f"shard {s['shard']}: {n}" for s in shards for n in s["notes"]],
        "uptime_s": max(s["uptime_s"] for s in shards),
        "queued": sum(s["queued"] for s in shards),
        "running": sum(s["running"] for s in shards),
        "owed": sum(s.get("owed", 0) for s in shards),
        "results": _add(s["results"] for s in shards),
        "by_reference": _add(s.get("by_reference", {}) for s in shards),
        "workers": {w: row for s in shards for w, row in s["workers"].items()},
        "express_leases": {w: pool for s in shards
                           for w, pool in s.get("express_leases", {}).items()},
        "learned": [row for s in shards for row in s.get("learned", [])],
        "shards": len(shards), "shard": None, "per_shard": shards,
    }
    pools: dict[str, dict[str, Any]] = {}
    supervision: dict[str, dict[str, Any]] = {}
    config: dict[str, dict[str, Any]] = {}
    for s in shards:
        for name, p in s["pools"].items():
            pools[name] = _merge_pool(pools.get(name), p)
        for name, h in s.get("supervision", {}).items():
            prev = supervision.get(name)
            supervision[name] = h if prev is None else {
                **h, **{k: prev[k] + h[k] for k in ("wanted", "live", "starting",
                                                     "start_failures")},
                "oldest_start_s": max(prev["oldest_start_s"], h["oldest_start_s"]),
                "down": prev["down"] if prev["down"] and h["down"] else ""}
        for name, c in s["pool_config"].items():
            prev_c = config.get(name)
            config[name] = c if prev_c is None else {**c, "replicas": prev_c["replicas"]
                                                     + c["replicas"]}
    out.update(pools=pools, supervision=supervision, pool_config=config)
    return out


def _merge_pool(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    if a is None:
        return dict(b)
    merged = {k: a[k] + b[k] for k in _SUMMED_POOL_FIELDS}
    workers = merged["workers"]
    merged["utilization"] = ((a["utilization"] * a["workers"] + b["utilization"] * b["workers"])
                             / workers if workers else 0.0)
    merged["queued"] = _add([a["queued"], b["queued"]])
    merged["oldest_wait_s"] = {c: max(a["oldest_wait_s"].get(c, 0.0), v)
                               for c, v in b["oldest_wait_s"].items()}
    merged["down"] = a["down"] if a["down"] and b["down"] else ""
    return merged


def _add(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for c in counts:
        for k, v in c.items():
            total[k] += v
    return dict(total)


__all__ = ["ShardedClient", "merge_stats", "shard_for"]
