"""raysched: a deadline- and priority-aware scheduler for mixed AI inference on Ray.

>>> import raysched
>>> client = raysched.connect()            # embedded local Ray and default pools
>>> h = client.submit(raysched.Task(kind="classification", priority="CRITICAL", sla_ms=50,
...                                 payload={"features": [0.1] * 8}))
>>> h.result(timeout=5).status

The public names load on first use, so ``import raysched.core`` (the pure decision logic) does
not pull in pydantic, asyncio, Ray or the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raysched.client import Client, TaskHandle, connect, find, wait_all
    from raysched.config import PoolConfig, SchedulerConfig, default_config
    from raysched.core.types import Priority, Status
    from raysched.errors import (
        BackpressureError,
        ConfigError,
        PoolUnavailableError,
        RayschedError,
        SchedulerNotFoundError,
        SubmitError,
        TaskTimeoutError,
    )
    from raysched.models import Payload, Requirements, Result, Task

_WHERE = {
    "Client": "raysched.client", "TaskHandle": "raysched.client", "connect": "raysched.client",
    "find": "raysched.client", "wait_all": "raysched.client",
    "PoolConfig": "raysched.config", "SchedulerConfig": "raysched.config",
    "default_config": "raysched.config",
    "Priority": "raysched.core.types", "Status": "raysched.core.types",
    "BackpressureError": "raysched.errors", "ConfigError": "raysched.errors",
    "PoolUnavailableError": "raysched.errors", "RayschedError": "raysched.errors",
    "SchedulerNotFoundError": "raysched.errors", "SubmitError": "raysched.errors",
    "TaskTimeoutError": "raysched.errors",
    "Payload": "raysched.models", "Requirements": "raysched.models", "Result": "raysched.models",
    "Task": "raysched.models",
}

__all__ = [
    "BackpressureError", "Client", "ConfigError", "Payload", "PoolConfig", "PoolUnavailableError",
    "Priority", "RayschedError", "Requirements", "Result", "SchedulerConfig",
    "SchedulerNotFoundError", "Status", "SubmitError", "Task", "TaskHandle", "TaskTimeoutError",
    "connect", "default_config", "find", "wait_all",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'raysched' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
