"""Config validation and the mapping of cluster resources to pools (pure, no Ray started)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from raysched import ConfigError, PoolConfig, SchedulerConfig, default_config
from raysched.config import resolve_pools

ROOT = Path(__file__).resolve().parents[1]


def cluster_pools(**llm) -> SchedulerConfig:
    return SchedulerConfig(pools=[
        PoolConfig(name="cpu", kind="cpu", replicas="auto", cluster_resource="cpu_pool"),
        PoolConfig(name="llm-7b", kind="llm", model="7b", replicas="auto",
                   cluster_resource="llm_7b", **llm),
        PoolConfig(name="llm-70b", kind="llm", model="70b", replicas="auto",
                   cluster_resource="llm_70b", **llm),
    ])


def resources_of_cluster_yaml(workers_per_type: int) -> dict[str, float]:
    """What ``ray.cluster_resources()`` reports with this many nodes of every worker type."""
    spec = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    total: dict[str, float] = {}
    for name, node_type in spec["available_node_types"].items():
        count = 1 if name == spec["head_node_type"] else workers_per_type
        for key, value in node_type["resources"].items():
            total[key] = total.get(key, 0) + value * count
    return total


def test_cluster_yaml_resources_map_to_pools():
    resources = resources_of_cluster_yaml(workers_per_type=2)
    pools, notes = resolve_pools(cluster_pools(), resources, real_engines=[])
    by_name = {p.name: p for p in pools}
    assert by_name["llm-7b"].resources == {"llm_7b": 1.0}
    assert by_name["llm-7b"].replicas == resources["llm_7b"]
    assert by_name["llm-70b"].replicas == resources["llm_70b"]
    assert by_name["cpu"].resources == {"cpu_pool": 1.0}
    # GPUs but no vllm here: the LLM pools fall back to the simulated engine and say so.
    assert by_name["llm-7b"].engine == "sim" and by_name["llm-7b"].num_gpus == 0
    assert any("vllm is not installed" in n and "SIMULATED" in n for n in notes)


def test_vllm_chosen_where_gpus_and_vllm_exist():
    resources = resources_of_cluster_yaml(workers_per_type=1)
    pools, _ = resolve_pools(cluster_pools(), resources, real_engines=["vllm"])
    assert {p.name: p.engine for p in pools if p.kind == "llm"} == {"llm-7b": "vllm",
                                                                     "llm-70b": "vllm"}


def test_embedded_default_runs_simulated_without_gpus():
    pools, notes = resolve_pools(default_config(), {"CPU": 2.0}, real_engines=[])
    assert [p.replicas for p in pools] == [2, 2, 1]
    assert all(p.engine == "sim" for p in pools if p.kind == "llm")
    assert sum("no GPUs" in n for n in notes) == 2


def test_auto_replicas_without_the_resource_is_a_clear_error():
    with pytest.raises(ConfigError, match="llm_7b"):
        resolve_pools(cluster_pools(), {"CPU": 8.0, "cpu_pool": 8.0}, real_engines=[])


def test_explicit_engine_trusted_where_the_head_lacks_it_but_not_without_gpus():
    config = SchedulerConfig(pools=[PoolConfig(name="llm-7b", kind="llm", engine="vllm")])
    pools, notes = resolve_pools(config, {"CPU": 8.0, "GPU": 1.0}, real_engines=[])
    assert pools[0].engine == "vllm" and pools[0].num_gpus == 1.0
    assert any("must be on the pool's nodes" in n for n in notes)
    with pytest.raises(ConfigError, match="no GPUs"):
        resolve_pools(config, {"CPU": 8.0}, real_engines=[])


@pytest.mark.parametrize("bad", [
    {"pools": [{"name": "cpu", "kind": "cpu"}, {"name": "cpu", "kind": "cpu"}]},
    {"pools": [{"name": "cpu", "kind": "quantum"}]},
    {"pools": [{"name": "cpu", "kind": "cpu", "replicas": -1}]},
    {"pools": [{"name": "cpu", "kind": "cpu", "replicas": "auto"}]},
    {"pools": [{"name": "", "kind": "cpu"}]},
    {"pools": [{"name": "llm", "kind": "llm", "time_scale": 0}]},
    {"pools": [], "aging_s": -1},
    {"pools": [], "surprise": True},
])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValidationError):
        SchedulerConfig.model_validate(bad)
