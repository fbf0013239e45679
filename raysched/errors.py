"""One exception root for raysched; "no worker can take this now" is a value, not an error."""

from collections.abc import Sequence
from typing import Any


class RayschedError(Exception):
    """Base of every error raysched raises on purpose."""


class SchedulerNotFoundError(RayschedError):
    """No scheduler actor answers under the given name and namespace."""


class ClientClosedError(RayschedError):
    """The client was closed: it submits, cancels and asks nothing more."""


class TaskTimeoutError(RayschedError, TimeoutError):
    """A result was not ready within the caller's timeout (the task itself goes on)."""


class ConfigError(RayschedError, ValueError):
    """A configuration that cannot be run on this cluster."""


class BackpressureError(RayschedError):
    """The client has as many unfinished tasks as it may hold; nothing was submitted."""


class PoolUnavailableError(RayschedError):
    """A pool has no live worker and none can be started (the reason says why)."""


class SubmitError(RayschedError):
    """Some tasks of a submit call did not reach the scheduler (they could not be sent, say a
    payload Ray cannot pickle); ``submitted`` holds the handles of those that did."""

    def __init__(self, message: str, submitted: Sequence[Any] | None = None) -> None:
        super().__init__(message)
        self.submitted: list[Any] = list(submitted or [])
