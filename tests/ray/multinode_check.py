"""Three raylets on this machine: each pool's workers land on the node carrying its resource.

Run as a script (``python -m tests.ray.multinode_check``) because a process can hold one Ray
connection, and the rest of the suite shares the embedded one.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> dict:
    import ray
    from ray.cluster_utils import Cluster

    import raysched
    from raysched import PoolConfig, SchedulerConfig, Status
    from raysched.bench.workloads import arrivals

    mb = 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 * mb, "node_ip_address": "127.0.0.1"})
    nodes = {
        "cpu": cluster.add_node(num_cpus=2, resources={"cpu_pool": 2}, object_store_memory=80 * mb,
                                node_ip_address="127.0.0.1"),
        "llm-7b": cluster.add_node(num_cpus=1, resources={"llm_7b": 2}, object_store_memory=80 * mb,
                                   node_ip_address="127.0.0.1"),
        "llm-70b": cluster.add_node(num_cpus=1, resources={"llm_70b": 1},
                                    object_store_memory=80 * mb, node_ip_address="127.0.0.1"),
    }
    cluster.wait_for_nodes()
    try:
        config = SchedulerConfig(pools=[
            PoolConfig(name="cpu", kind="cpu", replicas="auto", num_cpus=0.5,
                       cluster_resource="cpu_pool"),
            PoolConfig(name="llm-7b", kind="llm", model="7b", replicas="auto", num_cpus=0.25,
                       cluster_resource="llm_7b", time_scale=0.05),
            PoolConfig(name="llm-70b", kind="llm", model="70b", replicas="auto", num_cpus=0.25,
                       cluster_resource="llm_70b", time_scale=0.05),
        ])
        client = raysched.connect(address=cluster.address, config=config)
        stats = client.stats()
        placement = {wid: (w["pool"], w["node_id"]) for wid, w in stats["workers"].items()}
        # Burst-submitted: give the CRITICAL work room for the round trips of three raylets.
        tasks = [t.model_copy(update={"sla_ms": 5_000.0}) if t.kind == "classification" else t
                 for _, t in arrivals(1.0, seed=7)]
        results = list(client.map(tasks, timeout=120))
        client.close()
        ray.kill(client.actor)
        return {
            "expected_nodes": {pool: n.node_id for pool, n in nodes.items()},
            "placement": placement,
            "submitted": len(tasks),
            "ids_back": sorted(r.task_id for r in results) == sorted(t.id for t in tasks),
            "statuses": sorted({r.status.value for r in results}),
            "completed": sum(r.status is Status.COMPLETED for r in results),
            "worker_pools": sorted({(r.pool, r.worker_id.rsplit("-", 1)[0]) for r in results}),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main()))
    sys.exit(0)
