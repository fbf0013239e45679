"""A driver that shuts Ray down without closing its client, in its own process."""

from __future__ import annotations

import pytest

from tests.ray.checks import run_check

pytestmark = pytest.mark.ray


def test_an_unfinished_task_fails_with_the_reason_and_ray_is_not_started_again():
    out = run_check("tests.ray.shutdown_check", timeout_s=180)
    assert out["status"] == "failed" and "Ray was shut down" in out["reason"]
    # A submit or any call afterwards is refused with the reason, and submits nothing.
    assert len(out["refusals"]) == 2 and all("Ray was shut down" in r for r in out["refusals"])
    assert out["ray_initialized"] is False and out["outstanding"] == 0
