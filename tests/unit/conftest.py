"""Fixtures of the unit tests of the pure core (``raysched.core``).

These tests drive ``SchedulerCore`` synchronously with explicit times. They must never start
Ray: an autouse guard replaces ``ray.init`` (when ray is installed) by a function that raises.

Builders are exposed as fixtures (``make_task``, ``make_worker``, ``make_core``) rather than as
importable helpers, because ``conftest`` modules in folders without ``__init__.py`` all share the
module name ``conftest`` and cannot be imported reliably from test modules.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from raysched.core import CoreConfig, CoreTask, Priority, SchedulerCore, ServicePrior, WorkerSpec

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


# -- builders -------------------------------------------------------------------------------------

_ids = itertools.count()

DEFAULT_PRIOR = ServicePrior(fixed_s=0.05, prefill_s_per_token=1e-4, decode_s_per_step=0.02,
                             batch_slowdown=0.1)


def build_task(**kw: Any) -> CoreTask:
    """A ``CoreTask`` with defaults: unique id, summarization, MEDIUM, deadline 10 s, llm-7b,
    100 prompt tokens, 20 new tokens. ``deadline_s`` is absolute (the tests start at t=0)."""
    fields: dict[str, Any] = {"task_id": f"t{next(_ids)}", "kind": "summarization",
                              "priority": Priority.MEDIUM, "deadline_s": 10.0, "pool": "llm-7b",
                              "num_prompt_tokens": 100, "max_new_tokens": 20}
    fields.update(kw)
    return CoreTask(**fields)


def build_worker(**kw: Any) -> WorkerSpec:
    """A ``WorkerSpec`` of llm-7b with one slot, concurrency 1, a ``ServicePrior``, 8k context."""
    fields: dict[str, Any] = {"worker_id": f"w{next(_ids)}", "pool": "llm-7b", "slots": 1,
                              "concurrency": 1, "prior": DEFAULT_PRIOR,
                              "max_context_tokens": 8192}
    fields.update(kw)
    return WorkerSpec(**fields)


@pytest.fixture(scope="module")
def make_task() -> Callable[..., CoreTask]:
    return build_task


@pytest.fixture(scope="module")
def make_worker() -> Callable[..., WorkerSpec]:
    return build_worker


@pytest.fixture(scope="module")
def make_core() -> Callable[..., SchedulerCore]:
    """``make_core(*worker_specs, now_s=0.0, **config)``: a core with those workers added."""

    def _make(*workers: WorkerSpec, now_s: float = 0.0, **config: Any) -> SchedulerCore:
        core = SchedulerCore(CoreConfig(**config))
        for w in workers:
            core.add_worker(w, now_s)
        return core

    return _make
