"""The express lane on a real local Ray: urgent single tasks straight to a leased CPU worker,
and every way a lease ends (work queued behind it, the worker lost, a cancel, the client
closing) still ending each task exactly once."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from raysched import Status, Task, TaskTimeoutError

pytestmark = pytest.mark.ray

from ray import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _echo(x: object) -> object:
    return x


def _sleep_then_mark(seconds: float, mark: str) -> str:
    Path(mark + ".started").write_text("started")
    time.sleep(seconds)
    Path(mark).write_text("ran")
    return mark


def _die_once(mark: str) -> str:
    """Kills its worker the first time it runs, then succeeds."""
    if not os.path.exists(mark):
        Path(mark).write_text("died")
        os._exit(1)
    return "second run"


def urgent(fn, *args, priority: str = "CRITICAL", sla_ms: float = 30_000.0, **kw) -> Task:
    return Task(kind=kw.pop("kind", "express-test"), priority=priority, sla_ms=sla_ms,
                payload={"fn": fn, "args": args}, **kw)


def leased_worker(client, kind: str = "express-test", tries: int = 200) -> str:
    """Run urgent tasks of ``kind`` until one runs under the client's lease; its worker id."""
    for _ in range(tries):
        lease = client._express.get("cpu", kind)
        r = client.run(urgent(_echo, 1, kind=kind), timeout=30)
        assert r.ok
        if lease is not None and kind in lease.cases and r.worker_id == lease.worker_id:
            return lease.worker_id
        time.sleep(0.02)
    raise AssertionError("no task took the express lane")


def test_urgent_runs_take_the_lease_and_are_counted(make_client):
    client = make_client()
    worker = leased_worker(client)
    before = client.stats()["results"]["completed"]
    results = [client.run(urgent(_echo, i, priority=("CRITICAL", "HIGH")[i % 2]), timeout=30)
               for i in range(20)]
    assert [r.output for r in results] == list(range(20))
    assert {r.worker_id for r in results} == {worker}
    assert all(r.ok and r.deadline_met and r.attempts == 1 for r in results)
    stats = client.stats()
    assert stats["express_leases"] == {worker: "cpu"}
    assert stats["results"]["completed"] == before + 20  # reported, and counted once
    # MEDIUM and LOW work goes through the queue, never to the held worker.
    low = client.run(urgent(_echo, "low", priority="LOW"), timeout=30)
    assert low.ok and low.worker_id != worker
    assert client.outstanding() == 0


def test_queued_work_takes_the_leased_worker_back(make_client):
    client = make_client()
    worker = leased_worker(client)
    handles = client.submit_many([urgent(_echo, i, priority="LOW") for i in range(400)])
    during = client.run(urgent(_echo, "urgent"), timeout=30)
    results = [h.result(60) for h in handles]
    assert during.ok and all(r.ok for r in results)
    assert worker in {r.worker_id for r in results}  # the lease ended and it took queued work
    assert client.outstanding() == 0


def test_infeasible_urgent_task_is_refused_with_the_schedulers_reason(make_client):
    client = make_client()
    leased_worker(client)
    r = client.run(urgent(_echo, 1, sla_ms=0.001), timeout=30)
    assert r.status is Status.REJECTED and "infeasible deadline" in r.reason


def test_a_worker_lost_under_an_express_task_runs_it_through_the_scheduler(make_client,
                                                                          tmp_path):
    client = make_client()
    worker = leased_worker(client, kind="die-once")
    r = client.run(urgent(_die_once, str(tmp_path / "mark"), kind="die-once"), timeout=60)
    assert r.status is Status.COMPLETED and r.output == "second run"
    assert r.worker_id != worker  # the leased one died with its first run
    assert client.outstanding() == 0


def test_cancel_of_an_express_task_ends_it_once(make_client, tmp_path):
    client = make_client()
    leased_worker(client, kind="slow")
    mark = tmp_path / "mark"
    task = urgent(_sleep_then_mark, 0.5, str(mark), kind="slow")
    got: list = []
    runner = threading.Thread(target=lambda: got.append(client.run(task, timeout=30)))
    runner.start()
    started = Path(str(mark) + ".started")
    deadline = time.monotonic() + 10
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert task.id in client._on_express  # running under the lease
    assert client.cancel([task.id]) == [True]
    assert client.cancel([task.id]) == [False]  # ended already
    runner.join(30)
    assert got and got[0].status is Status.CANCELLED
    assert client.outstanding() == 0
    # It had started: a CPU task runs to its end, and its output is dropped, not delivered;
    # the scheduler counts it cancelled, once
    deadline = time.monotonic() + 10
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert mark.exists() and client.duplicates_dropped == 0
    assert client.stats()["results"]["cancelled"] == 1


def test_a_run_that_times_out_on_the_lane_still_ends_once(make_client, tmp_path):
    client = make_client()
    leased_worker(client, kind="slow")
    mark = tmp_path / "mark"
    with pytest.raises(TaskTimeoutError):
        client.run(urgent(_sleep_then_mark, 0.4, str(mark), kind="slow"), timeout=0.05)
    assert client.outstanding() == 1
    deadline = time.monotonic() + 10
    while client.outstanding() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.outstanding() == 0 and mark.exists()


def test_close_ends_express_tasks_and_gives_the_lease_back(make_client, tmp_path):
    import ray

    client = make_client()
    leased_worker(client, kind="slow")
    task = urgent(_sleep_then_mark, 0.5, str(tmp_path / "mark"), kind="slow")
    got: list = []
    runner = threading.Thread(target=lambda: got.append(client.run(task, timeout=30)))
    runner.start()
    deadline = time.monotonic() + 10
    while task.id not in client._on_express and time.monotonic() < deadline:
        time.sleep(0.005)
    client.close()
    runner.join(30)
    assert got and got[0].status is Status.CANCELLED
    deadline = time.monotonic() + 10
    while ray.get(client.actor.stats.remote())["express_leases"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.get(client.actor.stats.remote())["express_leases"] == {}


def test_urgent_runs_from_many_threads_spread_over_the_workers(make_client):
    # One task at a time on the lease: the others go through the scheduler to the free
    # workers instead of queueing behind it on the leased one.
    client = make_client()
    leased_worker(client, kind="slow")
    for _ in range(3):  # its estimates learn the task's time
        assert client.run(urgent(time.sleep, 0.3, kind="slow"), timeout=30).ok
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(
        client.run(urgent(time.sleep, 0.3, kind="slow", sla_ms=1_500), timeout=30)))
        for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and all(r.ok and r.deadline_met for r in results), results
    assert len({r.worker_id for r in results}) == 2


@pytest.mark.parametrize("path", ["express", "scheduler"])
def test_close_while_threads_wait_on_runs_ends_each_once(tmp_path, path):
    # Its own embedded Ray, in a child process: the client that started it shuts it down
    # while other threads wait on runs, by the lane and through the scheduler.
    import subprocess

    script = tmp_path / "close_inflight.py"
    script.write_text(CLOSE_INFLIGHT)
    out = subprocess.run([sys.executable, str(script), path], capture_output=True, text=True,
                         timeout=240, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "cancelled cancelled cancelled", out.stdout


CLOSE_INFLIGHT = """
import sys, threading, time
import raysched
from raysched import PoolConfig, SchedulerConfig, Task

cfg = SchedulerConfig(pools=[PoolConfig(name="cpu", kind="cpu", replicas=4, num_cpus=0.25)])
client = raysched.connect(config=cfg, num_cpus=2)
def task(s):
    return Task(kind="nap", priority="CRITICAL", sla_ms=60_000,
                payload={"fn": time.sleep, "args": (s,)})
client.express = sys.argv[1] == "express"
for _ in range(200):
    lease = client._express.get("cpu", "nap")
    r = client.run(task(0.0), timeout=30)
    if not client.express or (lease is not None and "nap" in lease.cases
                              and r.worker_id == lease.worker_id):
        break
    time.sleep(0.02)
else:
    raise SystemExit("no lease")
runs = []
threads = [threading.Thread(target=lambda: runs.append(client.run(task(2.0)).status.value))
           for _ in range(3)]
for t in threads:
    t.start()
time.sleep(0.5)
client.close()
for t in threads:
    t.join(30)
print(" ".join(sorted(runs)))
"""


def test_an_express_task_that_hangs_is_ended_as_a_hung_worker_s(make_client, tmp_path):
    from tests.ray.conftest import small_config

    config = small_config().model_copy(update={"hang_grace_s": 1.0})
    client = make_client(config)
    leased_worker(client, kind="hangs")
    got: list = []
    runner = threading.Thread(target=lambda: got.append(
        client.run(urgent(time.sleep, 600, kind="hangs"), timeout=120)))
    runner.start()
    time.sleep(0.3)
    # Work waiting for the pool asks the lease back; the worker does not answer in time
    low = client.submit_many([urgent(_echo, i, priority="LOW") for i in range(20)])
    runner.join(120)
    assert got and got[0].status is Status.FAILED and "hung" in got[0].reason, got
    assert all(h.result(60).ok for h in low)


def test_leases_off_in_the_config(make_client):
    from tests.ray.conftest import small_config

    client = make_client(small_config().model_copy(update={"express_leases": False}))
    for _ in range(20):
        assert client.run(urgent(_echo, 1), timeout=30).ok
    assert client._express.get("cpu", "express-test") is None
    assert client.stats()["express_leases"] == {}
