"""A three-node in-machine cluster (``ray.cluster_utils.Cluster``), in its own process."""

from __future__ import annotations

import pytest

from tests.ray.checks import run_check

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_pools_land_on_their_nodes_and_a_mixed_batch_completes():
    out = run_check("tests.ray.multinode_check", timeout_s=300)
    expected = out["expected_nodes"]
    pools = [pool for pool, _ in out["placement"].values()]
    assert sorted(pools) == ["cpu", "cpu", "llm-70b", "llm-7b", "llm-7b"]  # replicas="auto"
    for worker_id, (pool, node_id) in out["placement"].items():
        assert node_id == expected[pool], f"{worker_id} of {pool} is not on its node"
    assert out["ids_back"] and out["submitted"] > 20
    assert out["statuses"] == ["completed"] and out["completed"] == out["submitted"]
    assert all(pool == prefix for pool, prefix in out["worker_pools"])
