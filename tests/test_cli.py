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


@pytest.mark.parametrize("args", [[], ["--address", "127.0.0.1:1"], ["--address", "nonsense"]])
def test_status_without_a_cluster_says_so(args):
    proc = run("status", *args, timeout=120)
    assert proc.returncode == 2
    assert "raysched status:" in proc.stderr and "Traceback" not in proc.stderr


def test_submit_to_an_address_nothing_answers_says_so_at_once():
    # Ray would retry the address for a minute or more.
    proc = run("submit", "-", "--address", "127.0.0.1:1",
               stdin='{"kind": "job", "payload": {"prompt": "x"}}', timeout=30)
    assert proc.returncode == 2
    assert "no Ray cluster answers at 127.0.0.1:1" in proc.stderr


def test_an_address_that_answers_but_is_not_ray_says_so_at_once():
    # A dashboard's port, say: Ray would wait on it for a minute or more.
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        for command in (["status", "--address", address],
                        ["submit", "-", "--address", address]):
            proc = run(*command, stdin='{"kind": "job", "payload": {"prompt": "x"}}', timeout=30)
            assert proc.returncode == 2
            assert "not as a Ray cluster" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        server.shutdown()


def test_submit_of_a_file_that_is_not_text_says_so(tmp_path):
    path = tmp_path / "task.json"
    path.write_bytes(b"\xff\xfe{}")
    proc = run("submit", str(path))
    assert proc.returncode == 2
    assert "cannot read the task" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("duration", ["nan", "inf", "-5", "0"])
def test_demo_refuses_a_duration_that_is_not_a_positive_number(duration):
    proc = run("demo", "--duration", duration, timeout=30)
    assert proc.returncode == 2
    assert "--duration: must be a finite number above 0" in proc.stderr


class _DropsOne:
    """A client whose scheduler answers every task but ``dropped``: no Ray, no scheduler."""

    def __init__(self, dropped: str) -> None:
        self.dropped = dropped
        self.handles = []

    def submit_many(self, tasks):
        from raysched.client import TaskHandle
        from raysched.models import Result

        new = [TaskHandle(self, t.id) for t in tasks]
        self.handles += new
        for h, t in zip(new, tasks, strict=True):
            if t.id != self.dropped:
                h._set(Result(task_id=t.id, status="completed", priority=t.priority,
                              deadline_met=True))
        return new

    def outstanding(self) -> int:
        return sum(not h.done() for h in self.handles)


def test_demo_replay_counts_lost_tasks_by_handle():
    """The demo's ``lost`` is handles submitted minus Results received, so a task that never
    comes back shows, in the count and in the summary."""
    from raysched.bench.replay import replay
    from raysched.bench.report import records_from_results, summarize
    from raysched.bench.workloads import arrivals

    plan = list(arrivals(0.5, seed=1))
    client = _DropsOne(plan[3][1].id)
    run = replay(client, plan, wait_s=0.05)
    assert run.submitted == len(plan) and len(run.results) == len(plan) - 1 and run.lost == 1
    summary = summarize("raysched", records_from_results(run.results), run.span_s,
                        submitted=run.submitted)
    assert sum(summary["results"].values()) == summary["submitted"] - 1
    assert summary["lost"] == 1


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
    # Results that came back against handles submitted, counted apart: none may be lost.
    assert sum(summary["results"].values()) == summary["submitted"] > 0
    assert summary["lost"] == 0
    assert set(summary["per_pool"]) == {"cpu", "llm-7b", "llm-70b"}
