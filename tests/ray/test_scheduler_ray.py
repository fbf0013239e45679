"""The scheduler actor, workers and client on a real local Ray (no mocks)."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest
from pydantic import ValidationError

import raysched
from raysched import PoolConfig, SchedulerConfig, Status, Task
from raysched.bench.workloads import arrivals

pytestmark = pytest.mark.ray

# Ray workers cannot import this test module: ship its callables by value.
from ray import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def _boom() -> None:
    raise RuntimeError("the task's own bug")


def _die() -> None:
    os._exit(1)


def cpu_task(fn, *args, priority="LOW", sla_ms=30_000.0, **kw) -> Task:
    return Task(kind="custom", priority=priority, sla_ms=sla_ms,
                payload={"fn": fn, "args": args}, **kw)


def test_mixed_batch_every_task_ends_once(make_client):
    client = make_client()
    tasks = [t for _, t in arrivals(1.5, seed=3)]
    # Submitted as one burst: some 50 ms CRITICAL classifications may not all fit their
    # deadline on two CPU workers; those must end as expired, never silently, and never run
    # (expired in the queue, or skipped by the worker when their turn came too late).
    results = list(client.map(tasks, timeout=120))
    assert sorted(r.task_id for r in results) == sorted(t.id for t in tasks)
    for r in results:
        if r.status is Status.EXPIRED:
            assert r.kind == "classification" and r.reason
            assert r.worker_id == "" or "not run" in r.reason, r
    results = [r for r in results if r.status is not Status.EXPIRED]
    assert all(r.status is Status.COMPLETED for r in results), [
        r.reason for r in results if not r.ok]
    # Under load a burst of 50 ms tasks may expire rather than run late; enough must run.
    assert sum(r.kind == "classification" for r in results) >= 5
    for r in results:
        assert r.worker_id.startswith(r.pool + "-")
        assert r.total_s >= r.service_s >= 0 and r.attempts == 1
        if r.pool.startswith("llm"):
            assert "simulated" in r.output
        else:
            assert 0.0 <= r.output["fraud_probability"] <= 1.0
    stats = client.stats()
    assert stats["queued"] == 0 and stats["running"] == 0
    assert stats["results"]["completed"] == len(results)


def test_scheduler_is_found_by_name(make_client):
    client = make_client()
    name = client.actor._actor_id
    found = raysched.find(client_name(client))
    assert found._actor_id == name


def client_name(client) -> str:
    import ray

    return ray.get(client.actor.__ray_call__.remote(lambda self: self.config.name))


def test_bad_input_never_enters_the_queue(make_client):
    client = make_client()
    with pytest.raises(ValidationError, match="unknown pool"):
        client.submit(Task(kind="classification", sla_ms=50, payload={"features": [0.0] * 8},
                           requirements={"pool": "tpu"}))
    with pytest.raises(ValidationError, match="max_new_tokens"):
        client.submit({"kind": "summarization", "sla_ms": 100,
                       "payload": {"prompt": "hi", "max_new_tokens": 0}})
    # One bad task in a batch submits none of it.
    good = cpu_task(_sleep, 0.0)
    with pytest.raises(ValidationError):
        client.submit_many([good, {"kind": "classification", "priority": "URGENT", "sla_ms": 5}])
    stats = client.stats()
    assert sum(stats["results"].values()) == 0 and stats["queued"] == 0


def test_a_callable_that_cannot_be_pickled_submits_nothing(make_client):
    import threading

    client = make_client()
    lock = threading.Lock()
    tasks = [cpu_task(_sleep, 0.01), Task(kind="custom", sla_ms=1_000,
                                          payload={"fn": lambda: lock})]
    with pytest.raises(TypeError, match="payload.fn"):
        client.submit_many(tasks)
    assert client.outstanding() == 0 and client.stats()["results"]["completed"] == 0


def test_infeasible_deadline_rejected_at_once_with_reason(make_client):
    client = make_client()
    r = client.submit(Task(kind="reasoning", priority="HIGH", sla_ms=5,
                           payload={"prompt": "think " * 400, "max_new_tokens": 200})).result(5)
    assert r.status is Status.REJECTED and "infeasible deadline" in r.reason
    # Best effort: kept and run even though the deadline cannot be met.
    r = client.submit(Task(kind="reasoning", sla_ms=5, best_effort=True,
                           payload={"prompt": "think", "max_new_tokens": 20})).result(30)
    assert r.status is Status.COMPLETED and not r.deadline_met


def test_run_answers_with_the_result_in_one_call_or_through_the_poll(make_client, monkeypatch):
    client = make_client()
    r = client.run(cpu_task(_sleep, 0.0, priority="CRITICAL", sla_ms=5_000), timeout=30)
    assert r.status is Status.COMPLETED and r.output == 0.0
    r = client.run(Task(kind="reasoning", priority="HIGH", sla_ms=5,
                        payload={"prompt": "think " * 400, "max_new_tokens": 200}), timeout=5)
    assert r.status is Status.REJECTED and "infeasible deadline" in r.reason
    # A task that outlasts the call's wait gets its Result through the poll instead.
    monkeypatch.setattr(raysched.client, "RUN_WAIT_S", 0.05)
    r = client.run(cpu_task(_sleep, 0.3), timeout=30)
    assert r.status is Status.COMPLETED and r.output == 0.3
    assert client.outstanding() == 0
    # Results that came in a call's answer are acknowledged too, the last ones as the client
    # closes: nothing stays owed.
    client.close()
    import ray

    assert ray.get(client.actor.stats.remote())["owed"] == 0


def test_critical_overtakes_queued_low_work(make_client):
    # One CPU worker holding one task at a time: everything else waits in the central heap.
    client = make_client(cpu={"replicas": 1, "slots": 1})
    low = client.submit_many([cpu_task(_sleep, 0.3, priority="LOW") for _ in range(4)])
    time.sleep(0.1)
    crit = client.submit(Task(kind="classification", priority="CRITICAL", sla_ms=2_000,
                              payload={"features": [0.5] * 8}))
    r_crit = crit.result(10)
    assert r_crit.status is Status.COMPLETED and r_crit.deadline_met
    finished_low = [h for h in low if h.done()]
    assert len(finished_low) <= 1, "CRITICAL waited behind queued LOW work"
    assert all(h.result(10).ok for h in low)


def test_a_sequence_taken_back_for_critical_work_goes_on_from_its_tokens(make_client):
    # One simulated 7B worker of batch 1 (20x real time) decoding a LOW agent run of 1,500
    # tokens; a CRITICAL task with 300 ms to spare takes its slot. The LOW run goes on from
    # what it had generated: its one Result says all 1,500 tokens, and the pool counts the
    # tokens it kept.
    llm = PoolConfig(name="llm-7b", kind="llm", model="7b", replicas=1, max_batch_size=1,
                     num_cpus=0.25, time_scale=0.05)
    cpu = PoolConfig(name="cpu", kind="cpu", replicas=1, num_cpus=0.25)
    client = make_client(SchedulerConfig(name=f"sched-progress-{os.getpid()}", pools=[cpu, llm]))
    low = client.submit(Task(kind="agent", priority="LOW", sla_ms=60_000,
                             payload={"prompt": "x" * 2_000, "max_new_tokens": 1_500}))
    time.sleep(0.3)
    crit = client.run(Task(kind="summarization", priority="CRITICAL", sla_ms=300,
                           payload={"prompt": "y" * 400, "max_new_tokens": 16}), timeout=10)
    assert crit.ok and crit.deadline_met, crit
    r = low.result(30)
    assert r.ok and r.attempts == 1 and "1500 tokens" in r.output, r
    pool = client.stats()["pools"]["llm-7b"]
    assert pool["preempted"] == 1 and 0 < pool["tokens_kept"] < 1_500


def test_a_task_for_several_pools_runs_on_the_one_routing_picks(make_client):
    client = make_client()
    both = {"pools": ["llm-7b", "llm-70b"]}
    idle = client.submit(Task(kind="summarization", sla_ms=60_000, requirements=both,
                              payload={"prompt": "p" * 200, "max_new_tokens": 4}))
    r = idle.result(60)
    assert r.status is Status.COMPLETED and r.pool == "llm-7b"  # the first named, when it can
    with pytest.raises(ValidationError, match="unknown pool 'llm-13b'"):
        client.submit({"kind": "summarization", "sla_ms": 60_000,
                       "requirements": {"pools": ["llm-7b", "llm-13b"]},
                       "payload": {"prompt": "p", "max_new_tokens": 4}})


def test_expired_tasks_never_run(make_client, tmp_path):
    client = make_client(cpu={"replicas": 1, "slots": 1})
    blocker = client.submit(cpu_task(_sleep, 1.0, priority="CRITICAL"))
    marker = tmp_path / "ran"
    late = client.submit(cpu_task(marker.touch, priority="LOW", sla_ms=300))
    r = late.result(10)
    assert r.status is Status.EXPIRED and "deadline" in r.reason and r.worker_id == ""
    assert blocker.result(10).ok
    assert not marker.exists()


def test_cancel_queued_task(make_client):
    client = make_client(cpu={"replicas": 1, "slots": 1})
    blocker = client.submit(cpu_task(_sleep, 0.5))
    queued = client.submit(cpu_task(_sleep, 0.0))
    assert queued.cancel() is True
    r = queued.result(5)
    assert r.status is Status.CANCELLED and r.reason
    assert queued.cancel() is False  # already ended: nothing to do
    # An id given twice is cancelled once, and the answer says so at its first place.
    twice = client.submit(cpu_task(_sleep, 0.0))
    assert client.cancel([twice.task_id, twice.task_id]) == [True, False]
    assert twice.result(5).status is Status.CANCELLED
    assert blocker.result(10).ok


def test_task_errors_fail_with_reason_and_others_go_on(make_client):
    client = make_client()
    bad, good = client.submit_many([cpu_task(_boom), cpu_task(_sleep, 0.0)])
    r = bad.result(10)
    assert r.status is Status.FAILED and "the task's own bug" in r.reason and r.attempts == 1
    assert good.result(10).ok


def test_dead_worker_tasks_retried_then_failed(make_client):
    client = make_client()
    # A task that kills every worker it lands on fails after the bounded attempts...
    killer = client.submit(cpu_task(_die, priority="MEDIUM"))
    r = killer.result(60)
    assert r.status is Status.FAILED and "worker" in r.reason and r.attempts == 3
    # ...while the pool is replaced and keeps serving.
    after = client.submit(Task(kind="classification", sla_ms=10_000,
                               payload={"features": [1.0] * 8}))
    assert after.result(30).ok
    give_up = time.monotonic() + 30
    while client.stats()["pools"]["cpu"]["workers"] < 2 and time.monotonic() < give_up:
        time.sleep(0.2)
    assert client.stats()["pools"]["cpu"]["workers"] == 2


def test_killed_worker_requeues_in_flight_work(make_client):
    client = make_client(cpu={"replicas": 2, "slots": 1})
    handles = client.submit_many([cpu_task(_sleep, 0.8) for _ in range(2)])
    time.sleep(0.3)
    import ray

    victim = next(w for w, s in client.stats()["workers"].items() if s["in_flight"])
    assert ray.get(client.actor.kill_worker.remote(victim))
    results = [h.result(30) for h in handles]
    assert all(r.ok for r in results)
    retried = [r for r in results if r.attempts == 2]
    assert len(retried) == 1 and retried[0].worker_id != victim


def test_asyncio_driver(make_client):
    client = make_client()

    async def main():
        direct = await client.submit_async(cpu_task(_sleep, 0.01))
        handle = client.submit(Task(kind="summarization", priority="HIGH", sla_ms=5_000,
                                    payload={"prompt": "quarterly report " * 50,
                                             "max_new_tokens": 16}))
        return direct, await handle

    direct, summary = asyncio.run(main())
    assert direct.ok and direct.output == 0.01
    assert summary.ok and summary.pool == "llm-7b"


def test_llm_actor_batches_continuously(ray_session):
    import ray

    from actors.llm_actor import LLMActor
    from raysched.core.protocol import WorkItem, WorkPayload

    actor = ray.remote(LLMActor).options(num_cpus=0.25).remote(
        "solo", "llm-7b", engine="sim", model="7b", max_batch_size=4, max_wait_ms=0,
        time_scale=0.05)

    def item(task_id, n):
        return WorkItem(task_id, "summarization", 2, 1e12,
                        WorkPayload(prompt="p" * 400, max_new_tokens=n))

    async def run():
        long_gen = actor.execute.remote([item("long", 400)])
        await asyncio.sleep(0.2)  # the long request is decoding by now
        short = []
        async for ref in actor.execute.remote([item("s1", 5), item("s2", 5)]):
            short.extend(await ref)
        long_done = []
        async for ref in long_gen:
            long_done.extend(await ref)
        return short, long_done

    try:
        short, long_done = asyncio.run(run())
    finally:
        ray.kill(actor)
    assert {c.task_id for c in short} == {"s1", "s2"}
    # The short requests joined the running batch and left it before the long one finished.
    assert all(c.ok and c.batch_size == 3 and c.num_generated_tokens == 5 for c in short)
    assert long_done[0].ok and long_done[0].num_generated_tokens == 400
    assert long_done[0].service_s > max(c.service_s for c in short)


def test_learned_table_is_visible_and_survives_a_restart(make_client):
    import ray

    from tests.ray.conftest import small_config

    config = small_config()
    client = make_client(config)
    tasks = [Task(kind="summarization", priority="HIGH", sla_ms=10_000,
                  payload={"prompt": "q" * 800, "max_new_tokens": 24}) for _ in range(12)]
    assert all(r.ok for r in client.map(tasks, timeout=60))
    seen = [row for row in client.stats()["learned"] if row["kind"] == "summarization"]
    assert sum(row["observations"] for row in seen) == 12
    assert all(row["predicted_ms"] > 0 and row["uncertainty_ms"] >= 0 for row in seen)
    assert ray.get(client.actor.save_scorer.remote()) >= 1
    ray.kill(client.actor)
    give_up = time.monotonic() + 20
    while time.monotonic() < give_up:  # the name is free once the old actor is gone
        try:
            ray.get_actor(config.name, namespace=config.namespace)
            time.sleep(0.2)
        except ValueError:
            break
    again = make_client(config)
    assert any("restored" in note for note in again.notes)
    restored = [row for row in again.stats()["learned"] if row["kind"] == "summarization"]
    assert sum(row["observations"] for row in restored) == 12


def test_hung_worker_is_detected_killed_and_replaced(make_client):
    from tests.ray.conftest import small_config

    config = small_config().model_copy(update={"hang_grace_s": 1.0, "hang_factor": 1.0,
                                               "max_attempts": 2})
    client = make_client(config)
    hung = client.submit(cpu_task(_sleep, 120.0, priority="MEDIUM"))
    r = hung.result(60)
    assert r.status is Status.FAILED and "hung" in r.reason and r.attempts == 2
    ok = client.submit(Task(kind="classification", sla_ms=10_000, payload={"features": [0.0] * 8}))
    assert ok.result(30).ok


def test_backpressure_on_a_driver_that_submits_too_fast(make_client):
    client = make_client()
    client.max_outstanding = 2
    first = client.submit_many([cpu_task(_sleep, 0.5), cpu_task(_sleep, 0.5)])
    with pytest.raises(raysched.BackpressureError):
        client.submit(cpu_task(_sleep, 0.0), block=False)
    with pytest.raises(raysched.BackpressureError):
        client.submit(cpu_task(_sleep, 0.0), timeout=0.05)
    # Blocking with room to come: waits for a result, then goes in.
    late = client.submit(cpu_task(_sleep, 0.0), timeout=30)
    assert all(h.result(30).ok for h in [*first, late])


def test_run_through_a_scheduler_restart_gets_its_result_once(make_client):
    import threading

    import ray

    client = make_client(cpu={"replicas": 1, "slots": 1})
    # The scheduler dies while run's call waits for the task: the driver calls again once it
    # is back, and the task (in the task log) runs or reports there.
    killer = threading.Timer(0.3, lambda: ray.kill(client.actor, no_restart=False))
    killer.start()
    try:
        r = client.run(cpu_task(_sleep, 0.8, priority="HIGH"), timeout=120)
    finally:
        killer.join()
    assert r.status is Status.COMPLETED and r.output == 0.8
    assert client.outstanding() == 0
    assert any(n.startswith("restarted:") for n in client.stats()["notes"])
    assert client.run(cpu_task(_sleep, 0.0), timeout=30).ok


def test_scheduler_restart_runs_or_reports_every_accepted_task(make_client):
    import ray

    client = make_client(cpu={"replicas": 2, "slots": 1})
    slow = client.submit_many([cpu_task(_sleep, 0.3, priority="MEDIUM") for _ in range(10)])
    done_before = client.submit(cpu_task(_sleep, 0.0, priority="CRITICAL"))
    assert done_before.result(10).ok
    # Crash the scheduler (Ray restarts it: max_restarts) with work queued and running.
    ray.kill(client.actor, no_restart=False)
    results = [h.result(120) for h in slow]
    assert [r.task_id for r in results] == [h.task_id for h in slow]
    assert all(r.ok for r in results), [r.reason for r in results if not r.ok]
    notes = client.stats()["notes"]
    assert any(n.startswith("restarted:") for n in notes), notes
    # The driver got each result once, and the restarted scheduler keeps serving.
    assert client.outstanding() == 0
    assert client.submit(cpu_task(_sleep, 0.0)).result(30).ok
