"""A driver that shuts Ray down without closing its client, in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]


def test_an_unfinished_task_fails_with_the_reason_and_ray_is_not_started_again():
    proc = subprocess.run([sys.executable, "-m", "tests.ray.shutdown_check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["status"] == "failed" and "Ray was shut down" in out["reason"]
    assert out["ray_initialized"] is False
