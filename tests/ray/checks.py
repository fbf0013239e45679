"""Checks that need a Ray connection of their own, run as scripts in their own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_check(module: str, timeout_s: float) -> dict[str, Any]:
    """Run ``python -m module`` from the repository root; its last ``RESULT {json}`` line.
    Fails the test, with the end of the script's stderr, when it exits non-zero or prints none."""
    proc = subprocess.run([sys.executable, "-m", module], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    return out
