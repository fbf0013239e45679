"""A short chaos run in CI: worker kills (one behind the scheduler's back, one of a replacement
while it starts), a poison task, a node removed, a scheduler restart, an embedded scheduler
restarted; nothing lost, nothing duplicated, no healthy task failed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_every_task_ends_exactly_once_under_faults(tmp_path):
    out = tmp_path / "chaos.json"
    proc = subprocess.run([sys.executable, "benchmarks/chaos.py", "--tasks", "1500", "--rate",
                           "200", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=400, check=False)
    assert out.exists(), proc.stderr[-3000:]
    r = json.loads(out.read_text())
    ended = sum(r[k] for k in ("completed", "failed", "rejected", "expired", "cancelled"))
    assert r["lost"] == 0 and r["duplicated"] == 0
    assert ended == r["submitted"] == 1500
    kinds = {f["what"].split(" ")[0] for f in r["faults"]}
    assert {"killed", "removed", "restarted"} <= kinds
    whats = " | ".join(f["what"] for f in r["faults"])
    assert "behind the scheduler's back" in whats and "replacement" in whats, whats
    assert r["completed"] > 0.5 * r["submitted"]
    assert r["healthy_failed"] == 0, r["failed_reasons"]
    # It fails, saying why: quarantined, or out of attempts (a run of it before the scheduler
    # restarted counts as one, though its kills there are forgotten).
    poison = r["poison"]
    assert poison["status"] == "failed", poison
    assert "quarantine" in poison["reason"] or "gave up after" in poison["reason"], poison
    # Every killed pool was back to full size, in seconds.
    for f in r["faults"]:
        if f["pool"] and "killed" in f["what"]:
            assert f["pool_full_s"] is not None and f["pool_full_s"] < 20, f
    emb = r["embedded"]
    assert emb["lost"] == 0 and emb["duplicated"] == 0, emb
    assert emb["statuses"] == {"completed": emb["submitted"]}
    assert emb["after_restart"] == "completed"
    assert proc.returncode == 0, proc.stdout[-2000:]
