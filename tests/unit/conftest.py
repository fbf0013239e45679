"""The unit tier: the pure core (``raysched.core``) driven synchronously with explicit times.

These tests must never start Ray: an autouse guard replaces ``ray.init`` (when ray is installed)
by a function that raises. Tasks, workers, cores and completions come from ``tests.builders``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

RAY_GUARD_MESSAGE = "unit tests of the core must not start Ray"


def _refuse_ray(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError(RAY_GUARD_MESSAGE)


@pytest.fixture(autouse=True, scope="module")
def _no_ray() -> Iterator[None]:
    """Make ``ray.init`` raise for every test of this folder.

    Module scope (not function scope) so hypothesis tests do not trip the function-scoped-fixture
    health check, and so the patch is undone when the module ends and cannot leak into tests
    outside ``tests/unit`` that legitimately start Ray.
    """
    if importlib.util.find_spec("ray") is None:
        yield
        return
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray, "init", _refuse_ray)
        yield
