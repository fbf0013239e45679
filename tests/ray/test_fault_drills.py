"""Fault drills on a real local Ray: each asserts the exact Result counts and statuses.

- a pool whose workers die while starting: connect returns at once and says so, its tasks are
  refused at once with the reason (not left to expire);
- a poison task that hangs its worker: quarantined, then failed; its neighbours all complete,
  none charged an extra attempt;
- an idle worker killed behind the scheduler's back: seen by the health check and replaced
  before work is sent to it;
- an embedded scheduler killed with restart allowed: every task still ends exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from raysched import PoolConfig, SchedulerConfig, Status, Task
from tests.ray.conftest import small_config

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


def _cpu_task(task_id: str, fn, *args, sla_ms: float = 60_000.0) -> Task:
    return Task(id=task_id, kind="job", priority="HIGH", sla_ms=sla_ms,
                payload={"fn": fn, "args": args}, requirements={"pool": "cpu"})


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_pool_whose_workers_die_starting_refuses_at_once(make_client) -> None:
    # "sim" with an unknown model: the actor raises in its constructor, every time.
    config = small_config()
    broken = PoolConfig(name="broken", kind="llm", engine="sim", model="no-such-model",
                        replicas=1, num_cpus=0.1)
    config = config.model_copy(update={"pools": [*config.pools, broken],
                                       "max_start_failures": 2, "health_check_s": 0.2})
    started_s = time.monotonic()
    client = make_client(config)
    assert time.monotonic() - started_s < 60, "connect waited on a pool that cannot start"
    assert any("pool broken cannot serve" in n for n in client.notes), client.notes
    # A dict is validated against this scheduler's pools (their kinds), as a driver's is.
    task = {"kind": "summarization", "priority": "HIGH", "sla_ms": 30_000,
            "payload": {"prompt": "hello", "max_new_tokens": 8},
            "requirements": {"pool": "broken"}}
    result = client.submit(task).result(timeout=5)
    assert result.status is Status.REJECTED and "cannot serve" in result.reason
    assert "no-such-model" in result.reason
    # The healthy pools serve as usual.
    ok = client.submit(_cpu_task("fine", _sleep, 0.01)).result(timeout=30)
    assert ok.status is Status.COMPLETED


def test_a_poison_task_is_quarantined_and_its_neighbours_complete(make_client) -> None:
    client = make_client(SchedulerConfig.model_validate({
        **small_config().model_dump(), "hang_grace_s": 2.0, "health_check_s": 0.5}))
    poison = client.submit(_cpu_task("poison", _sleep, 3600.0))
    healthy = client.submit_many([_cpu_task(f"ok-{i}", _sleep, 0.05) for i in range(20)])
    results = [h.result(timeout=120) for h in healthy]
    assert Counter(r.status for r in results) == {Status.COMPLETED: 20}
    assert all(r.attempts == 1 for r in results), [r.attempts for r in results]
    bad = poison.result(timeout=120)
    assert bad.status is Status.FAILED and "quarantine" in bad.reason and bad.attempts == 3


def test_an_idle_worker_killed_is_replaced_before_work_reaches_it(make_client) -> None:
    import ray

    client = make_client(SchedulerConfig.model_validate({
        **small_config().model_dump(), "health_check_s": 0.3}))
    before = sorted(w for w, s in client.stats()["workers"].items() if s["pool"] == "cpu")
    assert len(before) == 2
    killed_s = time.monotonic()
    ray.kill(ray.get_actor(f"raysched-worker-{before[0]}", namespace="raysched"))
    while True:
        cpu = sorted(w for w, s in client.stats()["workers"].items() if s["pool"] == "cpu")
        if before[0] not in cpu and len(cpu) == 2:
            break
        assert time.monotonic() - killed_s < 30, f"pool not back to 2 workers: {cpu}"
        time.sleep(0.1)
    results = list(client.map([_cpu_task(f"after-{i}", _sleep, 0.01) for i in range(10)],
                              timeout=60))
    assert Counter(r.status for r in results) == {Status.COMPLETED: 10}
    assert all(r.attempts == 1 for r in results)


EMBEDDED_DRILL = textwrap.dedent("""
    import json, sys, time
    import ray
    import raysched
    from raysched import PoolConfig, SchedulerConfig, Task

    def work(x):
        time.sleep(0.005)
        return x

    def work_big(data, x):
        time.sleep(0.005)
        return bytes(data) + bytes([x])  # as large as its input: it goes back by reference

    config = SchedulerConfig(pools=[PoolConfig(name="cpu", kind="cpu", replicas=2,
                                               num_cpus=0.5)])
    client = raysched.connect(config=config, num_cpus=2)
    tasks = [Task(id=f"t{i}", kind="job", priority="MEDIUM", sla_ms=120_000,
                  payload={"fn": work, "args": (i,)}) for i in range(280)]
    big = bytes(200_000)  # over the inline limit: these payloads go by reference
    tasks += [Task(id=f"t{i}", kind="job", priority="MEDIUM", sla_ms=120_000,
                   payload={"fn": work_big, "args": (big, i % 256)}) for i in range(280, 300)]
    handles = client.submit_many(tasks)
    time.sleep(0.3)
    ray.kill(client.actor, no_restart=False)  # Ray restarts it; it replays its task log
    results = [h.result(timeout=120) for h in handles]
    late = client.submit(Task(kind="job", sla_ms=60_000, payload={"fn": work, "args": (1,)}))
    print(json.dumps({"statuses": [r.status.value for r in results],
                      "ids": sorted(r.task_id for r in results),
                      "big_ok": all(r.output == big + bytes([i % 256])
                                    for i, r in enumerate(results) if i >= 280),
                      "late": late.result(timeout=60).status.value,
                      "notes": client.stats()["notes"]}))
    client.close()
""")


def test_an_embedded_scheduler_survives_its_own_restart() -> None:
    # Its own embedded Ray, in a process of its own: the test session's Ray is not touched.
    tmp = tempfile.mkdtemp(prefix="rs-emb-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": tmp, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", EMBEDDED_DRILL], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ids"] == sorted(f"t{i}" for i in range(300))  # each exactly once
    assert Counter(report["statuses"]) == {"completed": 300}
    # The log keeps no object refs: the restarted scheduler waited for the driver to send the
    # by-reference payloads again, and every one came through whole.
    [note] = [n for n in report["notes"] if n.startswith("restarted:")]
    assert "waiting for their drivers to send their payloads again" in note, note
    assert report["big_ok"]
    assert report["late"] == "completed"


def _leave_mark(path: str) -> str:
    Path(path).write_text("ran")
    return path


def test_a_cancelled_task_never_runs_even_from_a_prefetch_slot(make_client, tmp_path) -> None:
    # One CPU worker busy with a long task; the marked task waits behind it in the worker's
    # prefetch slots. Cancelled there, it must end cancelled and never run.
    client = make_client(small_config(cpu={"replicas": 1}))
    blocker = client.submit(_cpu_task("blocker", _sleep, 2.0))
    marks = [tmp_path / f"mark-{i}" for i in range(3)]
    handles = [client.submit(_cpu_task(f"marked-{i}", _leave_mark, str(m)))
               for i, m in enumerate(marks)]
    time.sleep(0.5)  # bound to the worker by now, behind the blocker
    assert client.cancel([h.task_id for h in handles]) == [True, True, True]
    assert blocker.result(timeout=30).status is Status.COMPLETED
    for h in handles:
        assert h.result(timeout=10).status is Status.CANCELLED
    time.sleep(1.0)  # time for a wrongly started task to leave its mark
    assert not any(m.exists() for m in marks)
    assert client.submit(_cpu_task("after", _sleep, 0.01)).result(timeout=30).ok


def test_a_submit_that_cannot_be_sent_leaves_nothing_waiting(make_client) -> None:
    import threading


    client = make_client()
    dup = _cpu_task("dup", _sleep, 0.01)
    with pytest.raises(ValueError, match="given twice"):
        client.submit_many([dup, dup])
    # An argument that cannot be pickled (a lock): refused by name at submit, nothing sent.
    with pytest.raises(TypeError, match="payload.args or payload.kwargs cannot be pickled"):
        client.submit(_cpu_task("unpicklable", _sleep, threading.Lock()))
    assert client.outstanding() == 0
    # Neither id is taken: both can be submitted now and end once.
    assert client.submit(dup).result(timeout=30).ok
    assert client.outstanding() == 0


def test_resubmitting_a_finished_task_gets_its_result_again(make_client) -> None:
    client = make_client()
    t = _cpu_task("again", _sleep, 0.01)
    first = client.submit(t).result(timeout=30)
    second = client.submit(t).result(timeout=10)
    assert first.status is second.status is Status.COMPLETED
    assert second.task_id == "again" and client.outstanding() == 0
