"""Shared fixtures. Ray tests share one local Ray on 127.0.0.1 per test session."""

from __future__ import annotations

import os

import pytest

# Before anything imports ray: bind every Ray process to loopback, send no usage stats.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for every Ray test of the session."""
    import ray

    from raysched._ray import init_local

    if not ray.is_initialized():
        init_local(num_cpus=8, namespace="raysched", object_store_mb=128)
    yield ray
    ray.shutdown()
