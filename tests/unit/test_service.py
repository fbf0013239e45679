"""SchedulerService: idempotent submit, mailboxes, acknowledgement, the task log and its replay.

The service is driven with a fake clock and a real ``SchedulerCore``; nothing here starts Ray.
A "restart" is a new core and a new service over the same log file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from raysched import service as service_module
from raysched.config import PoolConfig
from raysched.core import CoreConfig, ServicePrior, Status, build_core
from raysched.core.protocol import ByRef, Completion, TaskRecord, WorkerInfo
from raysched.models import Task
from raysched.service import Batch, SchedulerService
from raysched.wal import TaskLog

T0_S = 1000.0
PRIOR = ServicePrior(fixed_s=0.01)
LLM_PRIOR = ServicePrior(fixed_s=0.05, prefill_s_per_token=1e-4, decode_s_per_step=0.02)


class FakeClock:
    """Seconds on the scheduler's clock, moved by hand."""

    def __init__(self, now_s: float = T0_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def make_service(clock: FakeClock, log_path: Path | None = None, workers: int = 1,
                 core_config: CoreConfig | None = None,
                 on_result: Callable[[str], None] | None = None) -> SchedulerService:
    """A service over a fresh ``raysched`` core with one CPU pool of ``workers`` workers (one
    slot each); when ``log_path`` is given, its task log there is opened (and replayed)."""
    service = SchedulerService(build_core("raysched", config=core_config), clock,
                               on_result=on_result)
    service.add_pool(PoolConfig(name="cpu", kind="cpu", slots=1))
    for i in range(workers):
        service.add_worker(WorkerInfo(worker_id=f"cpu-{i}", pool="cpu", engine="cpu",
                                      simulated=False, node_id="node-0", prior=PRIOR))
    if log_path is not None:
        service.open_log(TaskLog(log_path))
    return service


def task(task_id: str, sla_ms: float = 5_000.0, priority: str = "MEDIUM") -> TaskRecord:
    return Task(id=task_id, kind="classification", priority=priority, sla_ms=sla_ms,
                payload={"features": [0.0] * 8}).to_record()


def llm_task(task_id: str, priority: str, sla_ms: float, new_tokens: int) -> TaskRecord:
    return Task(id=task_id, kind="summarization", priority=priority, sla_ms=sla_ms,
                payload={"prompt": "p" * 400, "max_new_tokens": new_tokens}).to_record()


def run_one(service: SchedulerService, clock: FakeClock, output: object = "ok") -> str:
    """Assign, let the clock run 10 ms, and complete the first task assigned; its id."""
    batches = service.assign().batches
    assert batches, "nothing was assigned"
    item = batches[0].items[0]
    clock.now_s += 0.01
    service.complete([Completion(item.task_id, batches[0].worker_id, ok=True, service_s=0.01,
                                 output=output)])
    return item.task_id


def restart(clock: FakeClock, log_path: Path, workers: int = 1
            ) -> tuple[SchedulerService, str | None]:
    """A new core and service over ``log_path`` (the old service's file is left as a crash
    leaves it); returns the service and its restart note."""
    service = make_service(clock, workers=workers)
    note = service.open_log(TaskLog(log_path))
    return service, note


# -- purity ---------------------------------------------------------------------------------------


def test_service_and_task_log_import_no_ray() -> None:
    code = ("import sys, raysched.service, raysched.wal; "
            "sys.exit(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- submit ---------------------------------------------------------------------------------------


def test_same_client_resubmitting_a_task_is_accepted_once() -> None:
    clock = FakeClock()
    service = make_service(clock)
    assert service.submit("a", [task("t1")]) == [None]
    assert service.submit("a", [task("t1"), task("t1")]) == [None, None]
    assert list(service.pending()) == ["t1"]
    assert service.core.unfinished() == 1
    # Once it has ended (and until the driver acknowledges it), a resubmit runs nothing and
    # gets the Result again in the reply, so a new handle for the same id is answered too.
    run_one(service, clock)
    [again] = service.submit("a", [task("t1")])
    assert again is not None and again.task_id == "t1" and again.status is Status.COMPLETED
    assert service.core.unfinished() == 0
    assert [r.task_id for r in service.take("a")] == ["t1"]


def test_another_clients_duplicate_id_is_rejected_with_the_reason() -> None:
    clock = FakeClock()
    service = make_service(clock)
    service.submit("a", [task("t1")])
    [refused] = service.submit("b", [task("t1")])
    assert refused is not None
    assert refused.status is Status.REJECTED and "already in the scheduler" in refused.reason
    assert service.pending() == {"t1": ("a", task("t1"))}
    run_one(service, clock)  # ended but not acknowledged: the id is still taken
    [refused] = service.submit("b", [task("t1")])
    assert refused is not None and refused.status is Status.REJECTED
    assert not service.has_results("b")


def test_an_infeasible_deadline_is_refused_in_the_reply_not_the_mailbox() -> None:
    clock = FakeClock()
    service = make_service(clock)
    [refused] = service.submit("a", [task("t1", sla_ms=1.0)])  # the worker needs 10 ms
    assert refused is not None and refused.status is Status.REJECTED
    assert "infeasible deadline" in refused.reason
    assert service.pending() == {} and not service.has_results("a")


def test_a_task_shed_from_a_full_queue_gets_its_result() -> None:
    clock = FakeClock()
    service = make_service(clock, workers=0, core_config=CoreConfig(max_queued_per_pool=1))
    assert service.submit("a", [task("low", priority="LOW")]) == [None]
    assert service.submit("b", [task("high", priority="HIGH")]) == [None]
    [shed] = service.take("a")
    assert shed.task_id == "low" and shed.status is Status.REJECTED
    assert "shed under overload" in shed.reason
    assert list(service.pending()) == ["high"]


# -- results --------------------------------------------------------------------------------------


def test_a_result_is_delivered_to_its_own_clients_mailbox() -> None:
    clock = FakeClock()
    woken: list[str] = []
    service = make_service(clock, workers=2, on_result=woken.append)
    service.submit("a", [task("ta")])
    service.submit("b", [task("tb")])
    batches = service.assign().batches
    assert sorted(i.task_id for b in batches for i in b.items) == ["ta", "tb"]
    worker_of = {i.task_id: b.worker_id for b in batches for i in b.items}
    clock.now_s += 0.25
    service.complete([Completion("tb", worker_of["tb"], ok=True, service_s=0.25, output=42)])
    assert woken == ["b"]
    assert not service.has_results("a") and service.take("a") == []
    [result] = service.take("b")
    assert result.task_id == "tb" and result.status is Status.COMPLETED and result.output == 42
    assert result.total_s == pytest.approx(0.25) and result.deadline_met
    assert service.take("b") == []  # taken once
    assert list(service.pending()) == ["ta"]


def test_a_claimed_result_goes_to_the_waiting_call_and_stays_owed() -> None:
    clock = FakeClock()
    woken: list[str] = []
    service = make_service(clock, workers=2, on_result=woken.append)
    service.submit("a", [task("t1"), task("t2")])
    received: list[Any] = []
    receive = received.append
    assert service.claim("t1", receive) and service.claim("t2", receive)
    service.unclaim("t1", lambda r: None)  # not the call that claimed it: no effect
    service.unclaim("t2", receive)  # its call stopped waiting: the mailbox gets it
    assert not service.claim("nope", receive)  # not running here
    worker_of = {i.task_id: b.worker_id for b in service.assign().batches for i in b.items}
    clock.now_s += 0.25
    service.complete([Completion(t, worker_of[t], ok=True, service_s=0.25, output=t)
                      for t in ("t1", "t2")])
    assert [(r.task_id, r.output) for r in received] == [("t1", "t1")]
    assert [r.task_id for r in service.take("a")] == ["t2"] and woken == ["a"]
    assert set(service.unacked()) == {"t1", "t2"}  # both owed until the driver acknowledges
    assert service.stats()["owed"] == 2
    service.ack(["t1", "t2"])
    assert service.unacked() == {} and service.stats()["owed"] == 0


def test_a_result_given_again_in_a_submit_reply_is_on_record_first(tmp_path: Path) -> None:
    clock = FakeClock()
    log = tmp_path / "t.wal"
    service = make_service(clock, log)
    service.submit("a", [task("t1")])
    run_one(service, clock)
    [again] = service.submit("a", [task("t1")])  # a repeated call: its Result again
    assert again is not None and again.status is Status.COMPLETED
    after, _ = restart(clock, log)  # the file as a crash would leave it now
    assert set(after.unacked()) == {"t1"} and "t1" not in after.pending()


def test_a_task_accepted_without_a_flush_is_on_record_at_the_next_one(tmp_path: Path
                                                                       ) -> None:
    # ``run`` logs its task once the worker's call is out: the record waits for the flush
    # it makes before answering, and comes before the task's result in the file.
    clock = FakeClock()
    log = tmp_path / "t.wal"
    service = make_service(clock, log)
    assert service.submit("a", [task("t1")], flush=False) == [None]
    after, _ = restart(clock, log)
    assert not after.pending()  # not on record yet: its driver has not been answered
    run_one(service, clock)
    service.flush()
    after, _ = restart(clock, log)
    assert set(after.unacked()) == {"t1"} and not after.pending()
    service.submit("a", [task("t2")], flush=False)
    service.flush()
    after, _ = restart(clock, log)
    assert set(after.pending()) == {"t2"}


def test_a_driver_acknowledges_only_results_owed_to_it(tmp_path: Path) -> None:
    clock = FakeClock()
    log = tmp_path / "t.wal"
    service = make_service(clock, log, workers=2)
    assert service.submit("A", [task("job"), task("done")]) == [None, None]
    [refused] = service.submit("B", [task("job")])  # A's id: refused to B
    assert refused is not None and refused.status is Status.REJECTED
    worker_of = {i.task_id: b.worker_id for b in service.assign().batches for i in b.items}
    clock.now_s += 0.01
    service.complete([Completion("done", worker_of["done"], ok=True, service_s=0.01)])
    # B's acknowledgements of ids it was refused, or never had, end nothing of A's.
    service.ack(["job", "done"], "B")
    assert set(service.unacked()) == {"done"} and "job" in service.pending()
    service.flush()
    after, _ = restart(clock, log)
    assert "job" in after.pending() and set(after.unacked()) == {"done"}
    service.ack(["done"], "A")
    assert service.unacked() == {}


def test_assign_sends_each_worker_its_tasks_with_their_payloads() -> None:
    clock = FakeClock()
    service = make_service(clock)
    service.submit("a", [task("t1")])
    [batch] = service.assign().batches
    assert isinstance(batch, Batch) and batch.worker_id == "cpu-0"
    [item] = batch.items
    assert item.task_id == "t1" and item.payload.features == [0.0] * 8
    assert item.deadline_s == pytest.approx(T0_S + 5.0)
    assert batch.expected_s > 0


def test_acknowledgement_removes_a_result_from_what_is_owed() -> None:
    clock = FakeClock()
    service = make_service(clock)
    service.submit("a", [task("t1"), task("t2")])
    done = {run_one(service, clock), run_one(service, clock)}
    assert done == {"t1", "t2"}
    assert set(service.unacked()) == {"t1", "t2"}
    service.ack(["t1"])
    assert set(service.unacked()) == {"t2"}
    # An acknowledged id is free again: the driver may reuse it.
    assert service.submit("b", [task("t1")]) == [None]


def test_a_lost_worker_requeues_its_task_and_names_its_pool() -> None:
    clock = FakeClock()
    service = make_service(clock)
    service.submit("a", [task("t1")])
    service.assign()
    pool = service.worker_lost("cpu-0", "worker died")
    assert pool is not None and pool.name == "cpu"
    assert service.core.queued() == 1 and not service.has_results("a")
    assert service.pool_of("cpu-0") is None


def test_stats_are_a_plain_json_dict_of_the_expected_shape() -> None:
    clock = FakeClock()
    service = make_service(clock)
    service.notes.append("pool cpu: a note")
    service.submit("a", [task("t1"), task("t2")])
    service.assign()
    clock.now_s += 2.0
    stats = json.loads(json.dumps(service.stats()))
    assert {"pools", "workers", "results", "notes", "uptime_s", "queued", "running",
            "pool_config", "learned"} <= set(stats)
    assert stats["queued"] == 1 and stats["running"] == 1
    assert stats["uptime_s"] == pytest.approx(2.0)
    assert stats["notes"] == ["pool cpu: a note"]
    assert stats["workers"]["cpu-0"]["engine"] == "cpu"
    assert stats["workers"]["cpu-0"]["node_id"] == "node-0"
    assert stats["pools"]["cpu"]["queued"]["MEDIUM"] == 1
    assert stats["pool_config"]["cpu"]["kind"] == "cpu"


def one_llm_worker(clock: FakeClock) -> SchedulerService:
    """A service over one simulated 7B worker of batch 1."""
    service = SchedulerService(build_core("raysched"), clock)
    service.add_pool(PoolConfig(name="llm-7b", kind="llm", max_batch_size=1))
    service.add_worker(WorkerInfo(worker_id="llm-0", pool="llm-7b", engine="sim-7b",
                                  simulated=True, node_id="node-0", prior=LLM_PRIOR))
    return service


def test_urgent_work_takes_a_slot_back_and_the_old_bindings_report_is_ignored() -> None:
    clock = FakeClock()
    service = one_llm_worker(clock)
    service.submit("a", [llm_task("low", "LOW", sla_ms=600_000.0, new_tokens=1500)])
    [first] = service.assign().batches
    assert [i.binding for i in first.items] == [1]
    clock.now_s += 1.0
    service.submit("a", [llm_task("crit", "CRITICAL", sla_ms=2_500.0, new_tokens=32)])
    dispatch = service.assign()
    assert dispatch.take_back == {"llm-0": ["low"]}
    assert [(b.worker_id, [i.task_id for i in b.items]) for b in dispatch.batches] == [
        ("llm-0", ["crit"])]
    # The aborted sequence reports under its old binding: that ends nothing.
    service.complete([Completion("low", "llm-0", ok=False, service_s=1.0, error="aborted",
                                 binding=1)])
    assert set(service.pending()) == {"low", "crit"} and not service.has_results("a")
    clock.now_s += 0.7
    service.complete([Completion("crit", "llm-0", ok=True, service_s=0.7, output="hi",
                                 binding=dispatch.batches[0].items[0].binding)])
    [again] = service.assign().batches
    assert [(i.task_id, i.binding) for i in again.items] == [("low", 2)]
    [crit] = service.take("a")
    assert crit.task_id == "crit" and crit.ok and crit.deadline_met


def agent_service(clock: FakeClock) -> SchedulerService:
    """One 7B worker of batch 1, and a LOW agent run of 1,500 tokens, ``low``, submitted."""
    service = one_llm_worker(clock)
    # An agent run of its own kind: the short urgent tasks do not teach its output length.
    service.submit("a", [Task(id="low", kind="agent", priority="LOW", sla_ms=600_000.0,
                              payload={"prompt": "p" * 400, "max_new_tokens": 1500}
                              ).to_record()])
    return service


def take_back_for(service: SchedulerService, clock: FakeClock, urgent: str) -> int:
    """Submit a CRITICAL task that takes ``low``'s slot; returns its binding."""
    service.submit("a", [llm_task(urgent, "CRITICAL", sla_ms=2_500.0, new_tokens=32)])
    dispatch = service.assign()
    assert dispatch.take_back == {"llm-0": ["low"]}
    return dispatch.batches[0].items[0].binding


def test_a_task_taken_back_runs_again_from_what_it_had_generated() -> None:
    clock = FakeClock()
    service = agent_service(clock)
    [first] = service.assign().batches
    assert first.items[0].progress is None
    clock.now_s += 1.0
    before = service.core.deadline_of("low")
    crit = take_back_for(service, clock, "crit")
    # The worker's report of the aborted sequence carries its tokens so far: 40.
    service.complete([Completion("low", "llm-0", ok=False, service_s=1.0, error="aborted",
                                 output=list(range(40)), num_generated_tokens=40, binding=1)])
    assert service.core.deadline_of("low") == before
    clock.now_s += 0.7
    service.complete([Completion("crit", "llm-0", ok=True, service_s=0.7, output="hi",
                                 num_prompt_tokens=100, num_generated_tokens=32,
                                 binding=crit)])
    [again] = service.assign().batches
    [item] = again.items
    assert (item.task_id, item.progress) == ("low", (tuple(range(40)), 40))
    # Taken back once more, 10 tokens later: the report's ids are all 50 so far.
    clock.now_s += 0.5
    crit2 = take_back_for(service, clock, "crit2")
    service.complete([Completion("low", "llm-0", ok=False, service_s=0.5, error="aborted",
                                 output=list(range(50)), num_generated_tokens=10,
                                 binding=item.binding)])
    service.complete([Completion("crit2", "llm-0", ok=True, service_s=0.7, output="hi",
                                 binding=crit2)])
    [third] = service.assign().batches
    assert third.items[0].progress == (tuple(range(50)), 50)
    service.complete([Completion("low", "llm-0", ok=True, service_s=30.0, output="the text",
                                 binding=third.items[0].binding)])
    results = {r.task_id: r for r in service.take("a")}
    assert results["low"].output == "the text" and results["low"].attempts == 1
    assert not service._progress  # noqa: SLF001 - ended tasks keep no progress


def test_a_late_report_of_an_older_attempt_keeps_nothing() -> None:
    # Taken back twice before either abort report arrives: only the report of the attempt
    # taken back last describes what the next one goes on from.
    clock = FakeClock()
    service = agent_service(clock)
    service.assign()
    clock.now_s += 1.0
    crit = take_back_for(service, clock, "crit")
    clock.now_s += 0.7
    service.complete([Completion("crit", "llm-0", ok=True, service_s=0.7, output="hi",
                                 num_prompt_tokens=100, num_generated_tokens=32,
                                 binding=crit)])
    [again] = service.assign().batches  # from the start: no report has come
    assert again.items[0].progress is None
    clock.now_s += 0.5
    take_back_for(service, clock, "crit2")
    service.complete([
        Completion("low", "llm-0", ok=False, service_s=1.0, error="aborted",
                   output=list(range(40)), num_generated_tokens=40, binding=1),
        Completion("low", "llm-0", ok=False, service_s=0.5, error="aborted",
                   output=list(range(100, 110)), num_generated_tokens=10,
                   binding=again.items[0].binding)])
    assert service._progress["low"] == (tuple(range(100, 110)), 10)  # noqa: SLF001


def test_a_report_of_a_task_no_longer_queued_keeps_no_progress() -> None:
    # A cancelled task's aborted sequence reports too: there is nothing to go on with.
    clock = FakeClock()
    service = one_llm_worker(clock)
    service.submit("a", [llm_task("low", "LOW", sla_ms=600_000.0, new_tokens=1500)])
    [first] = service.assign().batches
    service.cancel(["low"])
    service.complete([Completion("low", "llm-0", ok=False, service_s=1.0, error="aborted",
                                 output=[1, 2, 3, 4], num_generated_tokens=4, binding=1)])
    assert not service._progress  # noqa: SLF001
    [r] = service.take("a")
    assert r.status is Status.CANCELLED


def test_a_worker_is_told_a_latest_start_earlier_by_its_measured_round_trip() -> None:
    # Started at the core's latest start, a task ends at its deadline at the worker and its
    # report arrives late by its way back: the worker refuses it that much earlier.
    clock = FakeClock()
    service = make_service(clock, workers=2)
    service.round_trip("cpu-0", 0.004)  # cpu-1 has measured none yet
    service.submit("a", [task("x"), task("y")])  # the same deadline and best case
    items = {b.worker_id: b.items[0] for b in service.assign().batches}
    assert items["cpu-0"].latest_start_s == pytest.approx(items["cpu-1"].latest_start_s - 0.004)
    assert items["cpu-1"].latest_start_s < items["cpu-1"].deadline_s


# -- cancellation ---------------------------------------------------------------------------------


def test_cancelling_a_queued_task_ends_it_once() -> None:
    clock = FakeClock()
    service = make_service(clock, workers=0)
    service.submit("a", [task("t1")])
    done = service.cancel(["t1"])
    assert done.ended == [True] and done.running_on == {}
    [result] = service.take("a")
    assert result.task_id == "t1" and result.status is Status.CANCELLED
    assert service.core.queued() == 0 and service.pending() == {}
    assert service.cancel(["t1"]).ended == [False]
    assert service.take("a") == []


def test_cancelling_a_running_task_names_its_worker_and_keeps_its_id_taken() -> None:
    clock = FakeClock()
    service = make_service(clock)
    service.submit("a", [task("t1")])
    service.assign()
    done = service.cancel(["t1", "unknown"])
    assert done.ended == [True, False] and done.running_on == {"cpu-0": ["t1"]}
    service.ack(["t1"])
    # The worker has not reported yet, so the core still holds the id.
    [refused] = service.submit("a", [task("t1")])
    assert refused is not None and "already in the scheduler" in refused.reason
    # Its late report ends nothing: the task ended once, cancelled.
    service.complete([Completion("t1", "cpu-0", ok=True, service_s=0.01)])
    assert [r.status for r in service.take("a")] == [Status.CANCELLED]


def test_a_driver_cancels_only_its_own_tasks() -> None:
    clock = FakeClock()
    service = make_service(clock, workers=0)
    service.submit("a", [task("t1")])
    # b submits the same id: refused; its cancel of that id, or of any of a's, ends nothing.
    [refused] = service.submit("b", [task("t1")])
    assert refused is not None and "already in the scheduler" in refused.reason
    assert refused.status is Status.REJECTED and service.core.counts[Status.REJECTED] == 1
    assert service.cancel(["t1"], "b").ended == [False]
    assert service.core.queued() == 1 and service.take("a") == []
    assert service.cancel(["t1"], "a").ended == [True]
    assert [r.status for r in service.take("a")] == [Status.CANCELLED]


def test_a_task_is_held_to_the_gpus_its_worker_holds() -> None:
    clock = FakeClock()
    service = make_service(clock)  # a cpu pool: no GPU
    service.add_pool(PoolConfig(name="llm-7b", kind="llm", engine="sim", model="7b"))
    service.add_pool(PoolConfig(name="llm-70b", kind="llm", engine="sim", model="70b"))

    def needing(task_id: str, gpus: float, **req: object) -> TaskRecord:
        return Task(id=task_id, kind="summarization", sla_ms=60_000.0,
                    payload={"prompt": "p", "max_new_tokens": 8},
                    requirements={"num_gpus": gpus, **req}).to_record()

    [cpu] = service.submit("a", [Task(id="cpu", kind="classification", sla_ms=5_000.0,
                                      payload={"features": [0.0] * 8},
                                      requirements={"num_gpus": 1}).to_record()])
    assert cpu is not None and cpu.status is Status.REJECTED
    assert "needs 1 GPUs on its worker" in cpu.reason and "cpu: 0" in cpu.reason
    # The simulated 7B stands for one A100, the 70B for four: of two pools, the one that fits.
    assert service.submit("a", [needing("one", 1)]) == [None]
    assert service.submit("a", [needing("four", 4, pools=["llm-7b", "llm-70b"])]) == [None]
    assert service.core.queued("llm-7b") == 1 and service.core.queued("llm-70b") == 1
    [eight] = service.submit("a", [needing("eight", 8, pools=["llm-7b", "llm-70b"])])
    assert eight is not None and "(llm-7b: 1, llm-70b: 4)" in eight.reason
    # Refused before the core saw them, they count with its refusals all the same.
    assert service.core.counts[Status.REJECTED] == 2


# -- the task log ---------------------------------------------------------------------------------


def test_replay_after_a_restart_reruns_pending_tasks_and_redelivers_unacked_results(
        tmp_path: Path) -> None:
    path = tmp_path / "sched.wal"
    clock = FakeClock()
    before = make_service(clock, path)
    before.submit("a", [task("a1", sla_ms=200.0)])
    assert run_one(before, clock, output="done") == "a1"
    before.submit("a", [task("a2")])
    before.submit("b", [task("b1", sla_ms=500.0), task("b2")])
    assert [r.task_id for r in before.take("a")] == ["a1"]  # taken (the log flushed), no ack
    deadlines = {tid: before.core.deadline_of(tid) for tid in ("a2", "b2")}

    clock.now_s += 1.0  # b1's deadline (500 ms) has passed while the scheduler was down
    after, note = restart(clock, path)
    assert note is not None and note.startswith("restarted:")
    assert "2 accepted tasks queued to run again, 1 reported as rejected, 1 results" in note
    owed = after.unacked()
    assert owed["a1"][0] == "a" and owed["a1"][1].output == "done"
    assert set(owed) == {"a1", "b1"}  # b1's rejection is owed to its driver too
    assert set(after.pending()) == {"a2", "b2"}
    assert after.core.queued() == 2
    # The reruns keep their original absolute deadlines, not ones counted from the restart.
    assert {tid: after.core.deadline_of(tid) for tid in deadlines} == deadlines
    assert [r.task_id for r in after.take("a")] == ["a1"]
    [late] = after.take("b")
    assert late.task_id == "b1" and late.status is Status.REJECTED
    assert late.reason.startswith("after a scheduler restart:")
    assert "restarted:" in after.notes[-1]


def test_a_task_sent_to_a_worker_before_a_restart_counts_that_run(tmp_path: Path) -> None:
    path = tmp_path / "sched.wal"
    clock = FakeClock()
    before = make_service(clock, path, workers=2)
    before.submit("a", [task("ran", sla_ms=2_000.0), task("late", sla_ms=300.0),
                        task("queued", sla_ms=60_000.0)])
    assert len(before.assign().batches) == 2  # "queued" waits: one slot per worker
    before.flush()  # as the dispatch loop does within its flush period

    clock.now_s += 0.29  # "late" can no longer run again in time; "ran" can
    after, _ = restart(clock, path, workers=2)
    [late] = after.take("a")
    assert late.task_id == "late" and late.status is Status.REJECTED and late.attempts == 1
    assert late.reason.startswith("the scheduler restarted while it ran, and it cannot run "
                                  "again: infeasible deadline")
    batches = after.assign().batches
    clock.now_s += 0.01
    after.complete([Completion(i.task_id, b.worker_id, ok=True, service_s=0.01)
                    for b in batches for i in b.items])
    results = {r.task_id: r for r in after.take("a")}
    assert results["ran"].attempts == 2 and results["ran"].status is Status.COMPLETED
    assert results["queued"].attempts == 1  # never sent before: its first run


class FakeRef:
    """Stands in for a Ray object ref (no Ray here): the task log must never pickle one."""

    def __reduce__(self) -> Any:
        raise AssertionError("an object ref was pickled into the task log")


def by_ref(record: TaskRecord) -> TaskRecord:
    """``record`` as a driver sends it when its payload is large: the payload by reference."""
    return replace(record, payload=ByRef(FakeRef(), 300_000))


def test_a_payload_by_reference_is_sent_again_by_its_driver_after_a_restart(
        tmp_path: Path) -> None:
    path = tmp_path / "sched.wal"
    clock = FakeClock()
    before = make_service(clock, path)
    assert before.submit("a", [by_ref(task("big")), task("small")]) == [None, None]
    assert before.stats()["by_reference"]["payload_bytes"] == 300_000
    deadline_s = before.core.deadline_of("big")
    before.flush()
    clock.now_s += 1.0
    after, note = restart(clock, path)
    assert note is not None and "1 waiting for their drivers to send their payloads" in note
    # The log kept no ref: the task waits for its driver, not in the queue.
    assert set(after.pending()) == {"small"}
    [refused] = after.submit("b", [by_ref(task("big"))])  # another driver may not take it up
    assert refused is not None and refused.status is Status.REJECTED
    again = by_ref(task("big"))
    assert after.submit("a", [again]) == [None]
    assert set(after.pending()) == {"small", "big"}
    assert after.core.deadline_of("big") == deadline_s  # the deadline it was accepted with
    assert after.pending()["big"] == ("a", again)  # what runs is the payload sent again


@pytest.mark.parametrize(("wait_s", "status"), [(4.0, Status.FAILED), (6.0, Status.EXPIRED)])
def test_a_payload_never_sent_again_ends_its_task_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wait_s: float, status: Status) -> None:
    monkeypatch.setattr(service_module, "PAYLOAD_RESEND_S", 3.0)
    path = tmp_path / "sched.wal"
    clock = FakeClock()
    before = make_service(clock, path)
    before.submit("a", [by_ref(task("big", sla_ms=5_000.0))])
    before.flush()
    after, _ = restart(clock, path)
    clock.now_s += wait_s if status is Status.FAILED else 6.0
    if status is Status.EXPIRED:
        monkeypatch.setattr(service_module, "PAYLOAD_RESEND_S", 10.0)
    after.assign()
    [result] = after.take("a")
    assert result.status is status and "waiting for its payload (300000 bytes" in result.reason
    assert after.pending() == {} and after.unacked()["big"][1] == result


def test_a_result_whose_output_went_by_reference_runs_again_after_a_restart(
        tmp_path: Path) -> None:
    path = tmp_path / "sched.wal"
    clock = FakeClock()
    before = make_service(clock, path)
    before.submit("a", [task("t1")])
    assert run_one(before, clock, output=ByRef(FakeRef(), 500_000, 0)) == "t1"
    assert before.stats()["by_reference"]["outputs"] == 1
    [result] = before.take("a")  # delivered, not acknowledged: the output lives in this process
    assert isinstance(result.output, ByRef)
    after, _ = restart(clock, path)
    assert after.unacked() == {} and set(after.pending()) == {"t1"}


def test_an_output_by_reference_reruns_after_compaction_but_not_once_acknowledged(
        tmp_path: Path) -> None:
    path = tmp_path / "sched.wal"
    clock = FakeClock()
    before = make_service(clock, path)
    before.submit("a", [task("t1"), task("t2")])
    big = ByRef(FakeRef(), 500_000, 0)
    first = run_one(before, clock, output=big)
    second = run_one(before, clock, output=big)
    assert {r.task_id for r in before.take("a")} == {first, second}
    before.compact()  # the log is rewritten while both results are still owed
    before.ack([second])
    before.flush()
    after, _ = restart(clock, path)
    # The unacknowledged one runs again (its output died with the old process); the one its
    # driver has does not.
    assert set(after.pending()) == {first} and after.unacked() == {}


def test_a_resent_payload_the_core_now_refuses_ends_in_the_log_and_the_mailbox(
        tmp_path: Path) -> None:
    path = tmp_path / "sched.wal"
    clock = FakeClock()
    before = make_service(clock, path)
    before.submit("a", [by_ref(task("late", sla_ms=200.0)), by_ref(task("gone"))])
    before.flush()
    clock.now_s += 1.0  # "late"'s deadline passes while the scheduler is down
    after, _ = restart(clock, path)
    assert after.submit("a", [by_ref(task("late", sla_ms=200.0))]) == [None]
    assert after.cancel(["gone"]).ended == [True]  # waiting for its payload: cancel holds
    results = {r.task_id: r for r in after.take("a")}
    assert results["late"].status is Status.REJECTED
    assert results["late"].reason.startswith("after a scheduler restart:")
    assert results["gone"].status is Status.CANCELLED
    after.flush()
    again, _ = restart(clock, path)  # both ended in the log: neither is taken up again
    assert again.pending() == {} and set(again.unacked()) == {"late", "gone"}


def test_acknowledged_results_are_not_redelivered_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sched.wal"
    clock = FakeClock()
    before = make_service(clock, path)
    before.submit("a", [task("t1"), task("t2")])
    done = run_one(before, clock)
    assert [r.task_id for r in before.take("a")] == [done]
    before.ack([done])
    before.flush()
    after, _ = restart(clock, path)
    assert after.unacked() == {} and not after.has_results("a")
    assert set(after.pending()) == {"t1", "t2"} - {done}


def test_a_clean_log_replays_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    _, note = restart(clock, tmp_path / "sched.wal")
    assert note is None


def test_a_torn_last_record_ends_the_replay_and_keeps_what_came_before(tmp_path: Path) -> None:
    path = tmp_path / "sched.wal"
    clock = FakeClock()
    before = make_service(clock, path)
    before.submit("a", [task("t1"), task("t2")])
    whole_bytes = path.stat().st_size
    before.submit("a", [task("t3")])
    with open(path, "r+b") as f:  # a crash in the middle of writing the last record
        f.truncate(path.stat().st_size - 3)

    after, note = restart(clock, path)
    assert note is not None
    assert set(after.pending()) == {"t1", "t2"}
    assert path.stat().st_size == whole_bytes  # the torn tail is cut off
    # What the restarted scheduler appends is read by the next replay, not hidden behind it.
    after.submit("a", [task("t4")])
    again, _ = restart(clock, path)
    assert set(again.pending()) == {"t1", "t2", "t4"}


def test_compaction_keeps_only_what_is_owed_and_replays_the_same(tmp_path: Path) -> None:
    path = tmp_path / "sched.wal"
    clock = FakeClock()
    service = make_service(clock, path)
    service.submit("a", [task(f"t{i}") for i in range(6)])
    for _ in range(3):
        run_one(service, clock)
    taken = service.take("a")
    service.ack([taken[0].task_id, taken[1].task_id])
    service.flush()
    pending, unacked = set(service.pending()), set(service.unacked())
    assert len(pending) == 3 and len(unacked) == 1
    size_before = path.stat().st_size

    service.compact()
    assert path.stat().st_size < size_before
    records = TaskLog(path).replay()
    assert set(records[0]) == pending and set(records[1]) == unacked
    assert set(records[2]) <= pending  # the starts kept are the pending tasks' only
    after, _ = restart(clock, path)
    assert set(after.pending()) == pending and set(after.unacked()) == unacked
    # The compacted log stays open for appending.
    service.submit("a", [task("t9")])
    again, _ = restart(clock, path)
    assert set(again.pending()) == pending | {"t9"}


def test_a_pool_whose_replacement_dies_starting_refuses_and_ends_its_tasks() -> None:
    # One worker, lost with a task on it; its replacements die before they register.
    clock = FakeClock()
    service = SchedulerService(build_core("raysched"), clock, max_start_failures=2)
    service.add_pool(PoolConfig(name="cpu", kind="cpu", replicas=1, slots=1))
    assert service.supervisor.to_start() == ["cpu"]
    service.worker_starting("cpu", "cpu-0")
    service.add_worker(WorkerInfo(worker_id="cpu-0", pool="cpu", engine="cpu", simulated=False,
                                  node_id="node-0", prior=PRIOR))
    assert service.submit("c1", [task("long"), task("queued")]) == [None, None]
    assert [i.task_id for b in service.assign().batches for i in b.items] == ["long"]
    service.worker_lost("cpu-0", "worker died")
    for n in (1, 2):
        assert service.supervisor.to_start() == ["cpu"]
        service.worker_starting("cpu", f"cpu-{n}")
        service.start_failed("cpu", f"cpu-{n}", "RayActorError: killed while starting")
        clock.now_s += 10.0
    results = {r.task_id: r for r in service.take("c1")}
    # The requeued task had run: failed; the one that never ran: rejected; both at once.
    assert results["long"].status is Status.FAILED and "cannot serve" in results["long"].reason
    assert results["queued"].status is Status.REJECTED
    [refused] = service.submit("c1", [task("fresh")])
    assert refused is not None and refused.status is Status.REJECTED
    assert "killed while starting" in refused.reason
    assert service.stats()["supervision"]["cpu"]["down"]


def test_prefetch_depth_hides_the_round_trip_within_bounds() -> None:
    from raysched.service import PrefetchDepth

    depth = PrefetchDepth(slots=4)
    assert depth.round_trip(0.001) is None  # no service time seen yet
    for _ in range(50):
        depth.service(0.0001)  # 100 us tasks behind a 1 ms round trip: 11 in flight
    assert depth.round_trip(0.001) == 11
    for _ in range(50):
        depth.service(0.1)  # 100 ms tasks: one running, one waiting is enough
    assert depth.round_trip(0.001) == PrefetchDepth.MIN_DEPTH
    for _ in range(200):
        depth.service(1e-7)  # as good as free: capped
    assert depth.round_trip(0.001) == PrefetchDepth.MAX_DEPTH


def test_a_cpu_workers_slots_follow_its_measured_round_trip() -> None:
    clock = FakeClock()
    service = SchedulerService(build_core("raysched"), clock)
    service.add_pool(PoolConfig(name="cpu", kind="cpu", replicas=1))
    service.add_worker(WorkerInfo(worker_id="cpu-0", pool="cpu", engine="cpu", simulated=False,
                                  node_id="node-0", prior=PRIOR))
    assert service.core.table.workers["cpu-0"].spec.slots == 4
    service.submit("c", [task(f"t{i}") for i in range(40)])
    batch = service.assign().batches[0]
    assert batch.idle and len(batch.items) == 4
    service.complete([Completion(i.task_id, "cpu-0", ok=True, service_s=0.0002)
                      for i in batch.items])
    service.round_trip("cpu-0", 0.002)
    assert service.core.table.workers["cpu-0"].spec.slots == 11
    assert len(service.assign().batches[0].items) == 11
    # A pool whose slots the config fixed keeps them.
    fixed = SchedulerService(build_core("raysched"), clock)
    fixed.add_pool(PoolConfig(name="cpu", kind="cpu", replicas=1, slots=4))
    fixed.add_worker(WorkerInfo(worker_id="cpu-0", pool="cpu", engine="cpu", simulated=False,
                                node_id="node-0", prior=PRIOR))
    fixed.round_trip("cpu-0", 0.002)
    assert fixed.core.table.workers["cpu-0"].spec.slots == 4
