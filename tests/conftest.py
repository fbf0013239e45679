"""Shared fixtures. Ray tests share one local Ray on 127.0.0.1 per test session.

A Ray test must not leave an actor alive: each test that uses the shared Ray is checked at its
teardown (the named actors it started must be gone), and the session once more before Ray shuts
down. What a test leaked is killed once recorded, so the tests after it start clean. Every actor
raysched starts is named (the scheduler, each worker); the check reads Ray's registry of named
actors, which needs no dashboard, so the shared Ray runs without one.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import pytest

# Before anything imports ray: bind every Ray process to loopback, send no usage stats.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# How long a killed actor, or one whose owner was killed, may take to be reported dead.
ACTOR_EXIT_S = 20.0


class ActorState(NamedTuple):
    name: str
    ray_namespace: str


def _live_actors() -> dict[ActorState, ActorState]:
    """The named actors of this session's Ray that are not dead (alive, pending, restarting)."""
    import ray

    return {a: a for a in (ActorState(n["name"], n["namespace"])
                           for n in ray.util.list_named_actors(all_namespaces=True))}


def _leaked(known: set[ActorState]) -> list[ActorState]:
    """Actors not dead and not in ``known``, once they have had ``ACTOR_EXIT_S`` to die."""
    give_up = time.monotonic() + ACTOR_EXIT_S
    while True:
        leaked = [a for key, a in _live_actors().items() if key not in known]
        if not leaked or time.monotonic() > give_up:
            return leaked
        time.sleep(0.2)


def _kill(actors: Iterable[ActorState]) -> None:
    """Kill leaked actors; the actors they own die with them."""
    import ray

    for a in actors:
        with contextlib.suppress(ValueError):  # it died since it was listed
            ray.kill(ray.get_actor(a.name, namespace=a.ray_namespace))


def _describe(actors: Iterable[ActorState]) -> str:
    return "; ".join(f"{a.name} in {a.ray_namespace!r}" for a in actors)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One embedded Ray for every Ray test of the session; fails if actors outlive the tests."""
    import ray

    from raysched._ray import init_local

    if not ray.is_initialized():
        init_local(num_cpus=8, namespace="raysched", object_store_mb=128)
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
