"""raysched: a deadline- and priority-aware scheduler for mixed AI inference on Ray.

>>> import raysched
>>> client = raysched.connect()            # embedded local Ray and default pools
>>> h = client.submit(raysched.Task(kind="classification", priority="CRITICAL", sla_ms=50,
...                                 payload={"features": [0.1] * 8}))
>>> h.result(timeout=5).status
"""

from raysched.client import Client, TaskHandle, connect, find, wait_all
from raysched.config import PoolConfig, SchedulerConfig, default_config
from raysched.core.types import Priority, Status
from raysched.errors import (
    BackpressureError,
    ConfigError,
    RayschedError,
    SchedulerNotFoundError,
    TaskTimeoutError,
)
from raysched.models import Payload, Requirements, Result, Task

__all__ = [
    "BackpressureError", "Client", "ConfigError", "Payload", "PoolConfig", "Priority", "RayschedError", "Requirements",
    "Result", "SchedulerConfig", "SchedulerNotFoundError", "Status", "Task", "TaskHandle",
    "TaskTimeoutError", "connect", "default_config", "find", "wait_all",
]
