from __future__ import annotations

import itertools

import pytest

from raysched import PoolConfig, SchedulerConfig

_names = itertools.count()


def small_config(**pool_overrides) -> SchedulerConfig:
    """Pools small enough for a 2-core machine; simulated LLMs run 20x faster than real time."""
    cpu = {"name": "cpu", "kind": "cpu", "replicas": 2, "num_cpus": 0.5}
    cpu.update(pool_overrides.pop("cpu", {}))
    return SchedulerConfig(
        name=f"sched-{next(_names)}",
        pools=[
            PoolConfig(**cpu),
            PoolConfig(name="llm-7b", kind="llm", model="7b", replicas=1, max_batch_size=8,
                       num_cpus=0.25, time_scale=0.05),
            PoolConfig(name="llm-70b", kind="llm", model="70b", replicas=1, max_batch_size=4,
                       num_cpus=0.25, time_scale=0.05),
        ],
    )


@pytest.fixture
def make_client(ray_session):
    """Start a scheduler (its own name, so tests do not share queues) on the shared Ray.

    ``close()`` leaves a scheduler running on a Ray the client did not start (it is detached,
    for other drivers), so teardown kills it; its workers die with it.
    """
    import ray

    import raysched

    clients = []

    def make(config: SchedulerConfig | None = None, **overrides):
        client = raysched.connect(config=config or small_config(**overrides))
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()
        ray.kill(c.actor)
