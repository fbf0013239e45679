"""Express leases in the core and the service: which worker a lease holds, when the scheduler
asks for it back, and how the tasks run under it are counted. No Ray here; the Ray tests
(``tests/ray/test_express.py``) drive the driver's side and the worker's."""

from __future__ import annotations

from raysched.config import PoolConfig
from raysched.core import ServicePrior, Status, build_core
from raysched.core.protocol import Completion, WorkerInfo
from raysched.core.types import Outcome, Priority
from raysched.models import Task
from raysched.service import LEASE_TTL_S, SchedulerService
from tests.builders import make_core, make_task, make_worker, ok

CPU_PRIOR = ServicePrior(fixed_s=0.01)


def cpu_core(workers: int = 2, slots: int = 2):
    specs = [make_worker(worker_id=f"cpu-{i}", pool="cpu", slots=slots, prior=CPU_PRIOR)
             for i in range(workers)]
    return make_core(*specs)


def cpu_task(**kw):
    kw.setdefault("kind", "noop")
    return make_task(pool="cpu", num_prompt_tokens=0, max_new_tokens=0, **kw)


def test_a_lease_holds_an_idle_worker_out_of_placement() -> None:
    core = cpu_core()
    held = core.lease("cpu", "L1")
    assert held is not None
    assert core.table.free_slots("cpu") == 2  # only the other worker's slots
    for _ in range(2):
        assert core.submit(cpu_task(), 0.0) == []
    placed = {a.worker_id for a in core.assign(0.0).assignments}
    assert placed and held not in placed


def test_no_lease_on_the_last_free_worker_or_with_work_queued() -> None:
    assert cpu_core(workers=1).lease("cpu", "L1") is None
    core = cpu_core()
    assert core.lease("cpu", "L1") is not None
    assert core.lease("cpu", "L2") is None  # the one left is placement's
    core = cpu_core(slots=1)
    for _ in range(3):
        core.submit(cpu_task(), 0.0)
    core.assign(0.0)  # both busy, one queued
    assert core.lease("cpu", "L1") is None
    assert core.lease("llm-7b", "L1") is None  # no such pool here


def test_waiting_work_asks_for_the_held_worker_back_once_then_runs_on_it() -> None:
    core = cpu_core(slots=1)
    held = core.lease("cpu", "L1")
    assert core.submit(cpu_task(), 0.0) == [] and core.submit(cpu_task(), 0.0) == []
    first = core.assign(0.0)
    assert len(first.assignments) == 1 and first.revoke == [held]
    assert core.assign(0.0).revoke == []  # asked once, not on every pass
    assert core.release(held) == "L1"
    second = core.assign(0.0)
    assert [a.worker_id for a in second.assignments] == [held]
    assert core.lease("cpu", "L2") is None  # work in flight on both, none idle


def test_no_lease_while_work_waits_in_a_prefetch_slot() -> None:
    # Work bound behind running work waits too, where a lent worker could run it at once.
    core = cpu_core(slots=4)
    for _ in range(3):
        core.submit(cpu_task(), 0.0)
    core.assign(0.0)  # one running on each worker, the third behind one of them
    assert core.queued("cpu") == 0
    assert core.lease("cpu", "L1") is None


def test_work_is_not_bound_behind_running_work_while_a_worker_is_held() -> None:
    # Two urgent tasks at once, one worker free and one held: the second does not wait in the
    # free worker's prefetch slot (it would wait out the first) but in the queue, until the
    # held worker is given back, and then runs there.
    core = cpu_core(slots=4)
    held = core.lease("cpu", "L1")
    first, second = cpu_task(priority=Priority.CRITICAL), cpu_task(priority=Priority.CRITICAL)
    core.submit(first, 0.0)
    core.submit(second, 0.0)
    decisions = core.assign(0.0)
    assert [a.task.task_id for a in decisions.assignments] == [first.task_id]
    assert decisions.revoke == [held] and core.queued("cpu") == 1
    core.release(held)
    assert [(a.task.task_id, a.worker_id) for a in core.assign(0.001).assignments] == [
        (second.task_id, held)]


def test_a_lost_held_worker_leaves_nothing_held() -> None:
    core = cpu_core()
    held = core.lease("cpu", "L1")
    assert held is not None
    core.worker_lost(held, 0.0)
    assert core.release(held) == ""
    assert core.lease("cpu", "L2") is None  # one worker left: placement's


def test_lease_estimates_are_the_ones_admission_uses_per_kind_seen() -> None:
    core = cpu_core()
    assert core.lease_cases("cpu") == {}
    t = cpu_task(kind="fraud", deadline_s=5.0)
    core.submit(t, 0.0)
    cases = core.lease_cases("cpu")
    assert set(cases) == {"fraud"}
    assert cases["fraud"] == core.placement.cases_s(t, core.table)


def test_an_express_task_counts_and_teaches_the_core() -> None:
    core = build_core("raysched")
    core.add_worker(make_worker(worker_id="cpu-0", pool="cpu", slots=2, prior=CPU_PRIOR), 0.0)
    core.add_worker(make_worker(worker_id="cpu-1", pool="cpu", slots=2, prior=CPU_PRIOR), 0.0)
    t = cpu_task(kind="slow", deadline_s=100.0, priority=Priority.CRITICAL)
    worker = core.table.workers["cpu-1"]
    before_s = core.placement.service_s(t, worker)
    for i in range(30):
        out = core.express_done(cpu_task(kind="slow", deadline_s=100.0),
                                ok((f"x{i}", "cpu-1"), service_s=0.1), Status.COMPLETED,
                                float(i), float(i) + 0.1)
        assert isinstance(out, Outcome) and out.status is Status.COMPLETED
        assert out.start_s is not None and abs(out.start_s - i) < 1e-9
    assert core.counts[Status.COMPLETED] == 30
    # Its worker's learned time for the kind moved from the prior (10 ms) to what it took
    assert before_s == 0.01 and abs(core.placement.service_s(t, worker) - 0.1) < 0.01


def _service(clock: list[float], workers: int = 2) -> SchedulerService:
    service = SchedulerService(build_core("raysched"), lambda: clock[0])
    service.add_pool(PoolConfig(name="cpu", kind="cpu", slots=1))
    service.add_pool(PoolConfig(name="llm-7b", kind="llm", model="7b"))
    for i in range(workers):
        service.add_worker(WorkerInfo(worker_id=f"cpu-{i}", pool="cpu", engine="cpu",
                                      simulated=False, node_id="n", prior=CPU_PRIOR))
    return service


def test_service_lease_is_one_per_driver_and_pool_renewed_in_place() -> None:
    clock = [0.0]
    service = _service(clock, workers=3)
    first = service.lease("a", "cpu", "L1")
    assert first is not None
    service.submit("a", [Task(kind="noop", priority="CRITICAL", sla_ms=1_000,
                              payload={"fn": len, "args": ([],)}).to_record()])
    service.assign()  # it starts on a free worker: nothing waits
    clock[0] = 5.0
    again = service.lease("a", "cpu", "L2")
    assert again is not None and again.lease_id == "L1" and "noop" in again.cases
    other = service.lease("b", "cpu", "L3")
    assert other is not None and other.worker_id != first.worker_id
    assert service.lease("a", "llm-7b", "L4") is None  # a batch engine is not lent
    assert service.leases_of("a") == [(first.worker_id, "L1")]


def test_service_ends_leases_not_renewed_and_releases_only_the_lease_named() -> None:
    clock = [0.0]
    service = _service(clock)
    lease = service.lease("a", "cpu", "L1")
    assert lease is not None
    clock[0] = LEASE_TTL_S / 2
    assert service.stale_leases() == []
    clock[0] = LEASE_TTL_S + 1.0
    assert service.stale_leases() == [(lease.worker_id, "L1")]
    service.release(lease.worker_id, "not-it")
    assert service.leases_of("a")
    service.release(lease.worker_id, "L1")
    assert service.leases_of("a") == [] and service.stats()["express_leases"] == {}


def test_service_express_reports_reach_metrics_without_a_result_owed() -> None:
    seen: list[Outcome] = []
    service = SchedulerService(build_core("raysched"), lambda: 0.0, on_outcome=seen.append)
    service.add_pool(PoolConfig(name="cpu", kind="cpu"))
    record = Task(kind="noop", priority="HIGH", deadline_s=50.0,
                  payload={"fn": len, "args": ([],)}).to_record()
    service.express_done([(record.to_wire(),
                           Completion(record.task_id, "cpu-0", ok=True, service_s=0.2).to_wire(),
                           Status.COMPLETED.value, 10.0, 10.5)])
    assert [(o.status, o.priority, o.deadline_met) for o in seen] == [
        (Status.COMPLETED, Priority.HIGH, True)]
    assert service.unacked() == {} and service.pending() == {}


def test_the_load_tables_count_of_work_waiting_in_prefetch_slots_is_exact() -> None:
    # What ``_waits`` reads instead of scanning every worker: random starts, finishes, slot
    # changes and losses, checked against the scan after each step.
    import random

    from raysched.core.load import LoadTable

    rng = random.Random(3)
    table = LoadTable()
    for i in range(5):
        table.add(make_worker(worker_id=f"w{i}", pool="cpu", slots=4,
                              concurrency=1 + i % 2, prior=CPU_PRIOR), 0.0)
    running: list[str] = []
    for step in range(3_000):
        op = rng.random()
        workers = [w for w in table.ordered("cpu") if w.free_slots > 0]
        if op < 0.5 and workers:
            task_id = f"t{step}"
            table.start(task_id, rng.choice(workers).worker_id, 0.01, float(step))
            running.append(task_id)
        elif op < 0.9 and running:
            table.finish(running.pop(rng.randrange(len(running))), float(step))
        elif op < 0.95:
            w = rng.choice(table.ordered("cpu"))
            table.set_slots(w.worker_id, rng.randint(1, 6))
        elif len(table.ordered("cpu")) > 2:
            lost = set(table.remove(rng.choice(table.ordered("cpu")).worker_id, float(step)))
            running = [t for t in running if t not in lost]
        scan = sum(max(0, len(w.in_flight) - w.spec.concurrency) for w in table.ordered("cpu"))
        assert table.waiting("cpu") == scan, step
