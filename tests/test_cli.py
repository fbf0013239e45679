"""The ``raysched`` command line, run as a user would, in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_ADDRESS": ""}


def run(*args: str, stdin: str = "", timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raysched.cli", *args], input=stdin, text=True,
                          capture_output=True, timeout=timeout, env=ENV)


def test_submit_rejects_bad_json_before_starting_anything():
    proc = run("submit", "-", stdin='{"kind": "summarization", "sla_ms": -1}')
    assert proc.returncode == 2
    assert "invalid task" in proc.stderr and "sla_ms" in proc.stderr


@pytest.mark.parametrize("args", [[], ["--address", "127.0.0.1:1"]])
def test_status_without_a_cluster_says_so(args):
    proc = run("status", *args, timeout=120)
    assert proc.returncode == 2
    assert "raysched status:" in proc.stderr


@pytest.mark.ray
def test_demo_runs_the_financial_mix_and_writes_json(tmp_path):
    out = tmp_path / "demo.json"
    proc = run("demo", "--duration", "3", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SIMULATED" in proc.stdout
    summary = json.loads(out.read_text())
    assert set(summary["per_priority"]) == {"CRITICAL", "HIGH", "MEDIUM", "LOW"}
    crit = summary["per_priority"]["CRITICAL"]
    assert crit["count"] > 50 and crit["p50_ms"] is not None and 0 <= crit["deadline_met"] <= 1
    assert sum(summary["results"].values()) == summary["submitted"]
    assert set(summary["per_pool"]) == {"cpu", "llm-7b", "llm-70b"}
