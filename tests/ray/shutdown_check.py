"""A driver that shuts Ray down without closing its client (run as a script, in its own process:
``python -m tests.ray.shutdown_check``): its unfinished task ends failed, with the reason, and
the client does not start or join a Ray again on its own."""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> dict:
    import ray

    import raysched
    from raysched import Task

    client = raysched.connect(num_cpus=2)
    # A long generation on the simulated 7B pool, at real time: still running at the shutdown.
    handle = client.submit(Task(kind="agent", priority="LOW", sla_ms=600_000,
                                payload={"prompt": "x" * 400, "max_new_tokens": 2_000}))
    time.sleep(1.0)
    ray.shutdown()
    result = handle.result(timeout=30)
    refusals = []
    for call in (lambda: client.submit(Task(kind="classification", sla_ms=1_000,
                                            payload={"features": [0.5] * 8})),
                 lambda: client.stats()):
        try:
            call()
        except raysched.SchedulerNotFoundError as exc:
            refusals.append(str(exc))
    time.sleep(2.0)  # a poller that connected again would have by now
    return {"status": result.status.value, "reason": result.reason, "refusals": refusals,
            "ray_initialized": ray.is_initialized(), "outstanding": client.outstanding()}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main()))
    sys.exit(0)
