"""Two scheduler shards on a real local Ray: tasks spread over them, each ends exactly once,
stats add up, cancel finds the right shard, and a second driver finds every shard."""

from __future__ import annotations

import sys
import time
from collections import Counter

import pytest

import raysched
from raysched import Status, Task
from raysched.shards import ShardedClient
from tests.ray.conftest import small_config

pytestmark = pytest.mark.ray

from ray import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _work(x: int) -> int:
    time.sleep(0.002)
    return x * 2


def test_two_shards_share_the_work_and_every_task_ends_once(ray_session) -> None:
    config = small_config().model_copy(update={"shards": 2})
    client = raysched.connect(config=config)
    try:
        assert isinstance(client, ShardedClient) and len(client.clients) == 2
        # cpu (2 replicas) runs on both shards; the single-replica LLM pools on shard 0 only.
        assert set(client.clients[0].pools) == {"cpu", "llm-7b", "llm-70b"}
        assert set(client.clients[1].pools) == {"cpu"}
        tasks = [Task(id=f"t{i}", kind="job", priority="HIGH", sla_ms=60_000,
                      payload={"fn": _work, "args": (i,)}, requirements={"pool": "cpu"})
                 for i in range(400)]
        tasks.append(Task(id="summary", kind="summarization", sla_ms=60_000,
                          payload={"prompt": "p" * 400, "max_new_tokens": 8}))
        results = list(client.map(tasks, timeout=120))
        assert sorted(r.task_id for r in results) == sorted(t.id for t in tasks)
        assert Counter(r.status for r in results) == {Status.COMPLETED: 401}
        assert {r.task_id: r.output for r in results if r.task_id != "summary"} == {
            f"t{i}": 2 * i for i in range(400)}
        stats = client.stats()
        assert stats["shards"] == 2 and stats["results"]["completed"] == 401
        per_shard = [s["results"].get("completed", 0) for s in stats["per_shard"]]
        assert sum(per_shard) == 401 and min(per_shard) > 100  # both carried a share
        assert {w.split("-s")[1][0] for w in stats["workers"] if w.startswith("cpu")} == {"0", "1"}

        # cancel reaches the shard that holds the task
        slow = Task(id="slow", kind="job", priority="LOW", sla_ms=60_000,
                    payload={"fn": time.sleep, "args": (2,)}, requirements={"pool": "cpu"})
        queued = [Task(id=f"q{i}", kind="job", priority="LOW", sla_ms=60_000,
                       payload={"fn": time.sleep, "args": (2,)}, requirements={"pool": "cpu"})
                  for i in range(8)]
        handles = client.submit_many([slow, *queued])
        time.sleep(0.5)
        assert client.cancel([h.task_id for h in handles]) == [True] * 9
        assert {h.result(timeout=30).status for h in handles} == {Status.CANCELLED}

        # another driver on the same cluster, with a default config, finds both shards
        pools = config.model_dump()["pools"]
        other = raysched.connect(config={"name": config.name, "pools": pools})
        try:
            assert isinstance(other, ShardedClient) and len(other.clients) == 2
            assert other.submit(tasks[1].model_copy(update={"id": "again"})).result(
                timeout=30).status is Status.COMPLETED
        finally:
            other.close()
    finally:
        client.close()
        for c in client.clients:
            ray_session.kill(c.actor)
