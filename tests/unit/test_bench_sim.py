"""The simulated benchmark's pow2_priority baseline and its false-rejection counts."""

from __future__ import annotations

from raysched.bench.report import merge_false_rejections
from raysched.bench.sim_mode import false_rejections, run_sim
from raysched.bench.workloads import DEFAULT_CLUSTER, PoolSpec, bursty, financial_mix
from raysched.core.policies import POLICIES, build_core
from raysched.core.types import CoreTask, Priority, ServicePrior, Status, WorkerSpec
from raysched.sim import SimTask


def test_pow2_priority_binds_early_and_orders_each_replica_by_class():
    p = POLICIES["pow2_priority"]
    assert p.early_binding and p.placement == "pow2" and p.replica_order == "class_arrival"
    # One 7B worker of batch 1: a LOW request runs; two more LOW ones and then a HIGH one are
    # bound to it. The HIGH one runs next, before the LOW ones that arrived earlier.
    cluster = (PoolSpec("llm-7b", 1, "7b", 1),)
    tasks = [SimTask(0.01 * i, CoreTask(f"t{i}", "k", prio, 1e9, "llm-7b", 100, 20),
                     true_new_tokens=20)
             for i, prio in enumerate([Priority.LOW, Priority.LOW, Priority.LOW,
                                       Priority.HIGH])]
    _, records = run_sim("pow2_priority", tasks, cluster)
    order = [r.task_id for r in sorted(records, key=lambda r: r.end_s)]
    assert order == ["t0", "t3", "t1", "t2"]
    _, fifo = run_sim("pow2", tasks, cluster)
    assert [r.task_id for r in sorted(fifo, key=lambda r: r.end_s)] == ["t0", "t1", "t2", "t3"]


def test_pow2_priority_ends_every_task_once():
    tasks = financial_mix(2_000, load=0.95, seed=1)
    entry, records = run_sim("pow2_priority", tasks, DEFAULT_CLUSTER)
    assert sorted(r.task_id for r in records) == sorted(t.task.task_id for t in tasks)
    assert entry["results"]["rejected"] == entry["results"]["expired"] == 0


def test_false_rejections_count_refused_tasks_that_would_have_made_it():
    tasks, _ = bursty(2_000, 4.0, seed=0)
    entry, records = run_sim("edf", tasks, DEFAULT_CLUSTER)
    fr = false_rejections("edf", tasks, DEFAULT_CLUSTER, records)
    assert fr is not None
    refused = entry["results"]["rejected"] + entry["results"]["expired"]
    assert fr["refused"] == refused > 0
    assert 0 <= fr["would_meet"] <= fr["refused"]
    assert fr["rate"] == fr["would_meet"] / fr["refused"]
    assert fr["submitted"] == len(tasks)
    assert fr["rate_per_task"] == fr["would_meet"] / len(tasks)
    assert sum(c["refused"] for c in fr["per_priority"].values()) == refused
    assert sum(c["refused"] for c in fr["per_status"].values()) == refused
    # The replay runs the refused tasks instead (everything else as before): none of them is
    # refused there, and what the replay completed in time is what the count says.
    spared = frozenset(r.task_id for r in records if r.status in ("rejected", "expired"))
    _, replay = run_sim("edf", tasks, DEFAULT_CLUSTER, spared=spared)
    again = {r.task_id: r for r in replay if r.task_id in spared}
    assert len(again) == len(spared)
    assert not any(r.status in ("rejected", "expired") for r in again.values())
    assert sum(r.deadline_met for r in again.values()) == fr["would_meet"]


def test_a_spared_task_is_planned_as_usual_but_never_refused():
    core = build_core("edf")
    core.add_worker(WorkerSpec("w0", "cpu", slots=1, concurrency=1,
                               prior=ServicePrior(fixed_s=1.0)), 0.0)
    core.spared = frozenset({"late"})
    hopeless = [CoreTask("late", "classify", Priority.HIGH, 0.5, "cpu"),
                CoreTask("other", "classify", Priority.HIGH, 0.5, "cpu")]
    outcomes = [o for t in hopeless for o in core.submit(t, 0.0)]
    assert [(o.task_id, o.status) for o in outcomes] == [("other", Status.REJECTED)]
    assert [a.task.task_id for a in core.assign(0.0).assignments] == ["late"]


def test_policies_that_refuse_nothing_have_no_false_rejections():
    tasks = financial_mix(500, load=0.9, seed=0)
    _, records = run_sim("pow2", tasks, DEFAULT_CLUSTER)
    assert false_rejections("pow2", tasks, DEFAULT_CLUSTER, records) is None


def test_seeds_merge_by_counts():
    per = {"HIGH": {"refused": 0, "would_meet": 0}}
    a = {"refused": 10, "would_meet": 1, "submitted": 100, "rate": 0.1, "rate_per_task": 0.01,
         "per_priority": {"HIGH": {"refused": 10, "would_meet": 1}}}
    b = {"refused": 0, "would_meet": 0, "submitted": 300, "rate": 0.0, "rate_per_task": 0.0,
         "per_priority": per}
    merged = merge_false_rejections([a, b])
    assert merged is not None
    assert merged["refused"] == 10 and merged["would_meet"] == 1 and merged["rate"] == 0.1
    assert merged["submitted"] == 400 and merged["rate_per_task"] == 1 / 400
    assert merged["per_priority"]["HIGH"] == {"refused": 10, "would_meet": 1}
    assert merge_false_rejections([None, None]) is None


def test_goodput_is_per_second_of_the_arrival_window_not_of_the_last_result():
    # Two CPU tasks 1 s apart, each met; then a LOW task at 1 s that runs 30 s on a second
    # worker. The straggler moves the run's span, not the goodput: 3 met over the 1 s window.
    cluster = (PoolSpec("cpu", 2),)
    tasks = [SimTask(0.0, CoreTask("a", "k", Priority.HIGH, 5.0, "cpu"), cpu_service_s=0.01),
             SimTask(1.0, CoreTask("b", "k", Priority.HIGH, 6.0, "cpu"), cpu_service_s=0.01),
             SimTask(1.0, CoreTask("c", "k", Priority.LOW, 100.0, "cpu"), cpu_service_s=30.0)]
    entry, records = run_sim("fifo", tasks, cluster)
    assert all(r.deadline_met for r in records)
    assert entry["window_s"] == 1.0
    assert entry["span_s"] > 30.0
    assert entry["goodput"] == 3.0
    # Every task at once: no window, so goodput falls back to the run's span.
    at_once = [SimTask(0.0, t.task, cpu_service_s=0.01) for t in tasks]
    entry, _ = run_sim("fifo", at_once, cluster)
    assert entry["window_s"] == entry["span_s"] > 0
    assert entry["goodput"] == 3 / entry["span_s"]
