"""Shared fixtures. Ray tests share one local Ray on 127.0.0.1 per test session.

A Ray test must not leave an actor alive: each test that uses the shared Ray is checked at its
teardown (the actors it started must be dead), and the session once more before Ray shuts down.
What a test leaked is killed once recorded, so the tests after it start clean.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ray.util.state.common import ActorState

# Before anything imports ray: bind every Ray process to loopback, send no usage stats.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# How long a killed actor, or one whose owner was killed, may take to be reported dead.
ACTOR_EXIT_S = 20.0


def _live_actors() -> dict[str, ActorState]:
    """The actors of this session's Ray that are not dead, by id.

    Asks this Ray's own GCS for its state API: with no address, Ray would take the cluster
    started last on the machine, which may be another test run's.
    """
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("state", "!=", "DEAD")], limit=10_000)
    return {a.actor_id: a for a in actors}


def _leaked(known: set[str]) -> list[ActorState]:
    """Actors not dead and not in ``known``, once they have had ``ACTOR_EXIT_S`` to die."""
    give_up = time.monotonic() + ACTOR_EXIT_S
    while True:
        leaked = [a for actor_id, a in _live_actors().items() if actor_id not in known]
        if not leaked or time.monotonic() > give_up:
            return leaked
        time.sleep(0.2)


def _kill(actors: Iterable[ActorState]) -> None:
    """Kill leaked actors that have a name; the actors they own die with them. An unnamed one
    is reachable only through its handle and dies when its owner drops it."""
    import ray

    for a in actors:
        if not a.name:
            continue
        with contextlib.suppress(ValueError):  # it died since it was listed
            ray.kill(ray.get_actor(a.name, namespace=a.ray_namespace))


def _describe(actors: Iterable[ActorState]) -> str:
    return "; ".join(f"{a.class_name} {a.name or a.actor_id} in {a.ray_namespace!r} ({a.state})"
                     for a in actors)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One embedded Ray for every Ray test of the session; fails if actors outlive the tests.

    The dashboard is on because the actor check reads Ray's state API, which it serves.
    """
    import ray

    from raysched._ray import init_local

    if not ray.is_initialized():
        init_local(num_cpus=8, namespace="raysched", object_store_mb=128, include_dashboard=True)
    yield ray
    leaked = _leaked(set())
    _kill(leaked)
    ray.shutdown()
    if leaked:
        pytest.fail(f"actors alive at the end of the session: {_describe(leaked)}",
                    pytrace=False)


@pytest.fixture(autouse=True)
def _no_leaked_actors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test on the shared Ray that leaves an actor alive (after its other fixtures, such
    as ``make_client``, have cleaned up), naming the actors; then kill them."""
    if "ray_session" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("ray_session")
    before = set(_live_actors())
    yield
    leaked = _leaked(before)
    if leaked:
        _kill(leaked)
        pytest.fail(f"{request.node.nodeid} left actors alive: {_describe(leaked)}",
                    pytrace=False)
