"""Sharded schedulers without Ray: how replicas split, how tasks route, how stats add up."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from raysched.config import (
    PoolConfig,
    SchedulerConfig,
    resolve_pools,
    shard_name,
    shard_replicas,
)
from raysched.shards import merge_stats, shard_for


@pytest.mark.parametrize(("replicas", "shards"), [(1, 1), (2, 2), (5, 2), (3, 4), (10, 3)])
def test_each_replica_runs_on_exactly_one_shard(replicas: int, shards: int) -> None:
    split = [shard_replicas(replicas, shards, k) for k in range(shards)]
    assert sum(split) == replicas and max(split) - min(split) <= 1


def test_a_pool_with_fewer_replicas_than_shards_lives_on_the_first_ones_only() -> None:
    cfg = SchedulerConfig(shards=3, pools=[
        PoolConfig(name="cpu", kind="cpu", replicas=4),
        PoolConfig(name="llm-70b", kind="llm", engine="sim", model="70b", replicas=1)])
    per_shard = [resolve_pools(cfg.for_shard(k), {"CPU": 8.0}, [])[0] for k in range(3)]
    assert [{p.name: p.replicas for p in pools} for pools in per_shard] == [
        {"cpu": 2, "llm-70b": 1}, {"cpu": 1}, {"cpu": 1}]
    _, notes = resolve_pools(cfg.for_shard(2), {"CPU": 8.0}, [])
    assert any("llm-70b: its 1 replicas run on other shards" in n for n in notes)
    assert [cfg.for_shard(k).actor_name for k in range(3)] == [
        "raysched-scheduler", "raysched-scheduler-shard1", "raysched-scheduler-shard2"]
    assert shard_name("s", 0) == "s"


def test_a_shard_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValidationError, match="shard 2 does not exist"):
        SchedulerConfig(shards=2, shard=2, pools=[PoolConfig(name="cpu", kind="cpu")])


def test_a_task_id_always_routes_to_the_same_shard_and_ids_spread() -> None:
    ids = [f"task-{i}" for i in range(4000)]
    routed = [shard_for(i, [0, 1, 2, 3]) for i in ids]
    assert routed == [shard_for(i, [0, 1, 2, 3]) for i in ids]  # a resubmission goes where it went
    counts = Counter(routed)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 900
    assert {shard_for(i, [2]) for i in ids} == {2}  # only the shards that run the pool


def _shard_stats(shard: int, queued: int, util: float) -> dict:
    pool = {"queued": {"HIGH": queued, "LOW": 1}, "oldest_wait_s": {"HIGH": 0.5 * shard},
            "workers": 2, "in_flight": 3, "free_slots": 5, "backlog_s": 0.25,
            "utilization": util, "down": ""}
    return {"shard": shard, "shards": 2, "notes": [f"note {shard}"], "uptime_s": 10.0 + shard,
            "queued": queued + 1, "running": 3, "results": {"completed": 10 * (shard + 1)},
            "by_reference": {"payloads": shard}, "workers": {f"cpu-s{shard}-0": {"pool": "cpu"}},
            "learned": [], "pools": {"cpu": pool},
            "supervision": {"cpu": {"wanted": 2, "live": 2, "starting": 0, "start_failures": 0,
                                    "oldest_start_s": 0.0, "down": ""}},
            "pool_config": {"cpu": {"name": "cpu", "replicas": 2}}}


def test_stats_of_the_shards_add_up() -> None:
    merged = merge_stats([_shard_stats(0, 4, 0.5), _shard_stats(1, 6, 1.0)])
    assert merged["shards"] == 2 and len(merged["per_shard"]) == 2
    assert merged["queued"] == 12 and merged["running"] == 6
    assert merged["results"] == {"completed": 30} and merged["by_reference"] == {"payloads": 1}
    assert set(merged["workers"]) == {"cpu-s0-0", "cpu-s1-0"}
    assert merged["notes"] == ["shard 0: note 0", "shard 1: note 1"]
    cpu = merged["pools"]["cpu"]
    assert cpu["queued"] == {"HIGH": 10, "LOW": 2} and cpu["workers"] == 4
    assert cpu["utilization"] == pytest.approx(0.75) and cpu["oldest_wait_s"]["HIGH"] == 0.5
    assert merged["supervision"]["cpu"]["wanted"] == 4
    assert merged["pool_config"]["cpu"]["replicas"] == 4
    single = _shard_stats(0, 1, 0.1)
    assert merge_stats([single]) is single


def test_a_task_for_several_pools_goes_to_a_shard_that_runs_them_all() -> None:
    from types import SimpleNamespace

    from raysched.models import Task
    from raysched.shards import ShardedClient

    # What ShardedClient reads of each shard's client: its pools and notes (no Ray here).
    shards = [SimpleNamespace(pools={"cpu": "cpu", "llm-7b": "llm", "llm-70b": "llm"}, notes=[]),
              SimpleNamespace(pools={"cpu": "cpu", "llm-7b": "llm"}, notes=[])]
    client = ShardedClient(shards)  # type: ignore[arg-type]
    both = Task(kind="summarization", sla_ms=5_000, requirements={"pools": ["llm-7b", "llm-70b"]},
                payload={"prompt": "p", "max_new_tokens": 4})
    assert client._shards_for(both) == [0]
    one = both.model_copy(update={"requirements": both.requirements.model_copy(
        update={"pools": None, "pool": "llm-7b"})})
    assert client._shards_for(one) == [0, 1]
    client._serving["llm-70b"] = []
    with pytest.raises(ValueError, match="no shard runs all of requirements.pools"):
        client._shards_for(both)
