"""SchedulerCore: admission, late binding, EDF, expiry, cancel, retries, placement, load table.

Every test drives the core synchronously with explicit times; nothing here starts Ray.
"""

from __future__ import annotations

import ast
import math
import pathlib
import subprocess
import sys

import pytest

import raysched.core
from raysched.core import (
    CoreConfig,
    Decisions,
    LeastCompletionTime,
    Priority,
    SchedulerCore,
    ServicePrior,
    Status,
    make_placement,
)
from raysched.core.types import TaskState
from tests.builders import admit, failed, make_core, make_task, make_worker, ok

C, H, M, L = Priority.CRITICAL, Priority.HIGH, Priority.MEDIUM, Priority.LOW

CORE_DIR = pathlib.Path(raysched.core.__file__).parent
FORBIDDEN = {"ray", "asyncio", "time", "datetime", "threading", "socket", "subprocess"}


def ids(decisions) -> list[str]:
    return [a.task.task_id for a in decisions.assignments]


# -- purity ---------------------------------------------------------------------------------------


def test_ray_init_is_refused_in_unit_tests() -> None:
    ray = pytest.importorskip("ray")
    with pytest.raises(RuntimeError, match="must not start Ray"):
        ray.init()


def _modules_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=CORE_DIR.parent.parent, timeout=60)
    return out.stdout.split()


def test_core_alone_pulls_no_ray_and_no_asyncio() -> None:
    # Load raysched.core under a bare parent package, so that what raysched/__init__.py imports
    # for the client (asyncio, threads) does not hide what the core itself imports.
    code = ("import sys, types; "
            f"pkg = types.ModuleType('raysched'); pkg.__path__ = [{str(CORE_DIR.parent)!r}]; "
            "sys.modules['raysched'] = pkg; "
            "import raysched.core; "
            "assert 'raysched.client' not in sys.modules; "
            "print('ray' in sys.modules, 'asyncio' in sys.modules)")
    assert _modules_after(code) == ["False", "False"]


def test_importing_core_does_not_import_ray() -> None:
    # Through the real package: its __init__ may load the client, but never ray itself.
    code = "import sys, raysched.core; print('ray' in sys.modules)"
    assert _modules_after(code) == ["False"]


@pytest.mark.parametrize("path", sorted(CORE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_no_clock_no_io(path: pathlib.Path) -> None:
    # 'time' is already loaded at interpreter start, so sys.modules cannot tell; read the source.
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{path.name} imports {sorted(imported & FORBIDDEN)}"


# -- admission ------------------------------------------------------------------------------------


def test_unknown_pool_is_rejected_naming_the_pool() -> None:
    core = make_core(make_worker())
    out = admit(core, make_task(pool="llm-404b"), 0.0)
    assert out is not None and out.status is Status.REJECTED
    assert "llm-404b" in out.reason
    assert core.counts[Status.REJECTED] == 1
    assert core.queued() == 0 and core.unfinished() == 0


def test_infeasible_deadline_is_rejected() -> None:
    w = make_worker()
    core = make_core(w)
    t = make_task(deadline_s=5.0 + 0.3)  # needs 0.46 s on an idle worker
    assert w.prior.service_s(100, 20) == pytest.approx(0.46)
    out = admit(core, t, 5.0)
    assert out is not None and out.status is Status.REJECTED
    assert "infeasible" in out.reason
    assert out.task_id == t.task_id and out.deadline_s == t.deadline_s
    assert core.state_of(t.task_id) is None
    assert core.assign(5.0).assignments == []


def test_deadline_exactly_feasible_is_accepted() -> None:
    w = make_worker()
    core = make_core(w)
    best = w.prior.service_s(100, 20, 1)
    # at t=0 the slack is exactly the deadline, so the comparison is exact
    assert admit(core, make_task(deadline_s=best), 0.0) is None
    assert admit(core, make_task(deadline_s=math.nextafter(best, 0.0)), 0.0).status \
        is Status.REJECTED


def test_feasibility_uses_fastest_eligible_worker() -> None:
    slow = make_worker(prior=ServicePrior(fixed_s=5.0))
    fast_small = make_worker(prior=ServicePrior(fixed_s=0.5), max_context_tokens=64)
    core = make_core(slow, fast_small)
    # the fast worker cannot hold 120 tokens, so the best case is the slow worker's 5 s
    out = admit(core, make_task(deadline_s=1.0), 0.0)
    assert out is not None and "infeasible" in out.reason
    assert admit(core, make_task(deadline_s=1.0, num_prompt_tokens=10, max_new_tokens=10), 0.0) \
        is None


def test_best_effort_infeasible_is_accepted_and_never_expires() -> None:
    w = make_worker()
    core = make_core(w)
    blocker = make_task(deadline_s=1000.0)
    admit(core, blocker, 0.0)
    (a,) = core.assign(0.0).assignments
    t = make_task(deadline_s=0.1, best_effort=True)
    assert admit(core, t, 0.0) is None
    d = core.assign(50.0)
    assert d.ended == [] and d.assignments == []
    assert core.state_of(t.task_id) is TaskState.QUEUED
    assert core.complete(ok(a), 60.0).status is Status.COMPLETED
    d = core.assign(60.0)
    assert ids(d) == [t.task_id] and d.ended == []
    out = core.complete(ok(d.assignments[0]), 61.0)
    assert out.status is Status.COMPLETED and not out.deadline_met


def test_queue_full_is_rejected_per_class() -> None:
    w = make_worker()
    core = make_core(w, max_queued_per_class=2)
    assert admit(core, make_task(), 0.0) is None
    assert admit(core, make_task(), 0.0) is None
    out = admit(core, make_task(), 0.0)
    assert out is not None and out.status is Status.REJECTED and "queue full" in out.reason
    assert admit(core, make_task(priority=H), 0.0) is None  # another class has room
    core.assign(0.0)  # HIGH goes first; MEDIUM stays full
    assert admit(core, make_task(), 0.0).status is Status.REJECTED
    core.complete(ok((core_running(core)[0], w.worker_id)), 1.0)
    core.assign(1.0)  # one MEDIUM leaves the queue
    assert admit(core, make_task(), 1.0) is None
    assert core.counts[Status.REJECTED] == 2


def core_running(core: SchedulerCore) -> list[str]:
    return [tid for w in core.table.workers.values() for tid in w.in_flight]


def test_duplicate_id_raises() -> None:
    core = make_core(make_worker())
    t = make_task()
    admit(core, t, 0.0)
    with pytest.raises(ValueError):
        admit(core, t, 0.0)
    core.assign(0.0)
    with pytest.raises(ValueError):
        admit(core, make_task(task_id=t.task_id), 0.1)  # while it runs
    assert core.counts[Status.REJECTED] == 0


def test_task_too_big_for_every_worker_is_rejected() -> None:
    core = make_core(make_worker(max_context_tokens=4096), make_worker(max_context_tokens=32768))
    out = admit(core, make_task(num_prompt_tokens=32700, max_new_tokens=100), 0.0)
    assert out is not None and out.status is Status.REJECTED
    assert "32800" in out.reason
    assert admit(core, make_task(num_prompt_tokens=32700, max_new_tokens=68), 0.0) is None


def test_empty_pool_accepts_and_waits_for_a_worker() -> None:
    core = make_core()
    core.add_pool("llm-7b")
    t = make_task(deadline_s=100.0)
    assert admit(core, t, 0.0) is None
    assert core.assign(1.0).assignments == []
    w = make_worker()
    core.add_worker(w, 2.0)
    d = core.assign(2.0)
    assert ids(d) == [t.task_id] and d.assignments[0].worker_id == w.worker_id


# -- ordering: late binding, EDF ------------------------------------------------------------------


def test_late_binding_critical_overtakes_queued_low() -> None:
    w = make_worker()
    core = make_core(w)
    first = make_task(deadline_s=100.0)
    admit(core, first, 0.0)
    (a,) = core.assign(0.0).assignments
    lows = [make_task(priority=L, deadline_s=50.0) for _ in range(3)]
    for t in lows:
        assert admit(core, t, 0.1) is None
    crit = make_task(priority=C, deadline_s=90.0)
    assert admit(core, crit, 0.2) is None
    assert core.assign(0.3).assignments == []  # nothing bound while the only slot is busy
    core.complete(ok(a), 0.5)
    d = core.assign(0.5)
    assert ids(d) == [crit.task_id]
    assert d.assignments[0].worker_id == w.worker_id and d.assignments[0].attempt == 1
    order = []
    for i in range(3):
        core.complete(ok(d.assignments[0]), 1.0 + i)
        d = core.assign(1.0 + i)
        order += ids(d)
    assert order == [t.task_id for t in lows]


def test_edf_inside_a_class() -> None:
    core = make_core(make_worker())
    tasks = [make_task(priority=H, deadline_s=d) for d in (30.0, 10.0, 20.0, 10.0)]
    for t in tasks:
        admit(core, t, 0.0)
    order = []
    now = 0.0
    while core.unfinished():
        d = core.assign(now)
        order += ids(d)
        for a in d.assignments:
            core.complete(ok(a), now + 0.5)
        now += 0.5
    # deadline 10 twice: arrival order breaks the tie
    assert order == [tasks[1].task_id, tasks[3].task_id, tasks[2].task_id, tasks[0].task_id]


def test_multi_slot_worker_takes_several_in_one_pass() -> None:
    w = make_worker(slots=3, concurrency=2)
    core = make_core(w)
    ts = [make_task(priority=p) for p in (L, C, M, H)]
    for t in ts:
        admit(core, t, 0.0)
    d = core.assign(0.0)
    assert ids(d) == [ts[1].task_id, ts[3].task_id, ts[2].task_id]
    assert core.table.workers[w.worker_id].free_slots == 0
    assert core.queued() == 1 and core.running() == 3


# -- expiry ---------------------------------------------------------------------------------------


def test_queued_task_past_latest_start_expires_and_never_runs() -> None:
    w = make_worker()
    core = make_core(w)
    admit(core, make_task(deadline_s=100.0), 0.0)
    (a,) = core.assign(0.0).assignments
    t = make_task(deadline_s=2.0)
    admit(core, t, 0.0)
    latest = 2.0 - w.prior.service_s(100, 20, 1)  # 1.54
    d = core.assign(latest)  # not passed yet
    assert d.ended == [] and core.state_of(t.task_id) is TaskState.QUEUED
    d = core.assign(math.nextafter(latest, 10.0))
    assert [o.task_id for o in d.ended] == [t.task_id]
    out = d.ended[0]
    assert out.status is Status.EXPIRED and out.reason and out.start_s is None
    assert out.attempts == 0 and out.deadline_s == 2.0
    assert core.counts[Status.EXPIRED] == 1 and core.state_of(t.task_id) is None
    core.complete(ok(a), 3.0)
    d = core.assign(3.0)
    assert d.assignments == [] and d.ended == []
    assert core.cancel(t.task_id, 3.0) is None


def test_expiry_happens_even_with_free_workers_elsewhere() -> None:
    # A task that is feasible at submit but is only looked at too late expires, it does not run
    core = make_core(make_worker())
    t = make_task(deadline_s=1.0)
    admit(core, t, 0.0)
    d = core.assign(5.0)
    assert d.assignments == [] and [o.task_id for o in d.ended] == [t.task_id]


def test_running_task_does_not_expire() -> None:
    core = make_core(make_worker())
    t = make_task(deadline_s=1.0)
    admit(core, t, 0.0)
    (a,) = core.assign(0.0).assignments
    assert core.assign(50.0).ended == []
    out = core.complete(ok(a), 60.0)
    assert out.status is Status.COMPLETED and not out.deadline_met


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel_queued() -> None:
    core = make_core(make_worker())
    t = make_task()
    admit(core, t, 0.0)
    out = core.cancel(t.task_id, 1.0, reason="user said so")
    assert out.status is Status.CANCELLED and out.reason == "user said so"
    assert out.end_s == 1.0 and out.start_s is None
    assert core.cancel(t.task_id, 1.0) is None
    assert core.assign(1.0).assignments == []
    assert core.queued() == 0 and core.unfinished() == 0
    assert core.counts[Status.CANCELLED] == 1


def test_cancel_unknown_is_none() -> None:
    assert make_core().cancel("ghost", 0.0) is None


def test_cancel_running_once_then_completion_ignored_and_slot_freed() -> None:
    w = make_worker()
    core = make_core(w)
    t, nxt = make_task(), make_task()
    admit(core, t, 0.0)
    (a,) = core.assign(0.0).assignments
    admit(core, nxt, 0.1)
    out = core.cancel(t.task_id, 0.2)
    assert out.status is Status.CANCELLED and out.worker_id == w.worker_id
    assert out.start_s == 0.0 and out.attempts == 1
    assert core.cancel(t.task_id, 0.3) is None
    assert core.counts[Status.CANCELLED] == 1
    assert core.unfinished() == 1  # only nxt
    # the slot stays taken until the worker reports
    assert core.table.workers[w.worker_id].free_slots == 0
    assert core.assign(0.3).assignments == []
    assert core.complete(ok(a), 0.4) is None
    assert core.complete(ok(a), 0.4) is None  # duplicate report
    assert core.table.workers[w.worker_id].free_slots == 1
    assert core.counts[Status.COMPLETED] == 0 and core.counts[Status.CANCELLED] == 1
    assert ids(core.assign(0.5)) == [nxt.task_id]


def test_cancel_running_then_worker_lost_ends_nothing_twice() -> None:
    w = make_worker()
    core = make_core(w)
    t = make_task()
    admit(core, t, 0.0)
    core.assign(0.0)
    assert core.cancel(t.task_id, 0.1).status is Status.CANCELLED
    assert core.worker_lost(w.worker_id, 0.2) == []
    assert core.state_of(t.task_id) is None and core.queued() == 0
    assert sum(core.counts.values()) == 1


# -- failures, retries, lost workers --------------------------------------------------------------


def test_non_retryable_failure_fails() -> None:
    core = make_core(make_worker())
    t = make_task()
    admit(core, t, 0.0)
    (a,) = core.assign(0.0).assignments
    out = core.complete(failed(a, error="CUDA OOM"), 1.0)
    assert out.status is Status.FAILED and out.reason == "CUDA OOM" and out.attempts == 1
    assert core.complete(failed(a), 1.0) is None


def test_failure_without_error_text_has_a_reason() -> None:
    core = make_core(make_worker())
    admit(core, make_task(), 0.0)
    (a,) = core.assign(0.0).assignments
    out = core.complete(failed(a, error=""), 1.0)
    assert out.status is Status.FAILED and out.reason


def test_retryable_failure_requeues_until_attempts_run_out() -> None:
    w = make_worker()
    core = make_core(w, max_attempts=2)
    t = make_task(deadline_s=100.0)
    admit(core, t, 0.0)
    (a,) = core.assign(0.0).assignments
    assert a.attempt == 1
    assert core.complete(failed(a, retryable=True), 1.0) is None
    assert core.state_of(t.task_id) is TaskState.QUEUED
    assert core.table.workers[w.worker_id].free_slots == 1
    (a2,) = core.assign(1.0).assignments
    assert a2.task.task_id == t.task_id and a2.attempt == 2
    out = core.complete(failed(a2, retryable=True, error="engine died"), 2.0)
    assert out.status is Status.FAILED and out.attempts == 2 and "engine died" in out.reason
    assert core.counts[Status.FAILED] == 1 and core.unfinished() == 0


def test_worker_lost_requeues_then_fails_after_max_attempts() -> None:
    w1, w2, w3 = make_worker(), make_worker(), make_worker()
    core = make_core(w1, max_attempts=2)
    t = make_task(deadline_s=100.0)
    admit(core, t, 0.0)
    (a,) = core.assign(0.0).assignments
    assert a.worker_id == w1.worker_id
    assert core.worker_lost(w1.worker_id, 1.0) == []
    assert core.state_of(t.task_id) is TaskState.QUEUED
    assert core.running() == 0 and w1.worker_id not in core.table.workers
    assert core.assign(1.0).assignments == []  # no worker left in the pool
    core.add_worker(w2, 2.0)
    (a2,) = core.assign(2.0).assignments
    assert a2.worker_id == w2.worker_id and a2.attempt == 2
    outs = core.worker_lost(w2.worker_id, 3.0, reason="node died")
    assert [o.status for o in outs] == [Status.FAILED]
    assert "node died" in outs[0].reason and w2.worker_id in outs[0].reason
    assert "2 attempts" in outs[0].reason and outs[0].attempts == 2
    assert core.state_of(t.task_id) is None
    core.add_worker(w3, 4.0)
    assert core.assign(4.0).assignments == []
    assert core.counts[Status.FAILED] == 1


def test_a_task_whose_run_was_lost_and_is_too_late_to_rerun_expires_naming_the_loss() -> None:
    # It ran (its worker hung and was killed, say): once its latest start has passed, it
    # expires with the loss named first, not a bare "the latest start was ... ago".
    w1, w2 = make_worker(), make_worker()
    core = make_core(w1, max_attempts=3)
    t = make_task(deadline_s=5.0)
    admit(core, t, 0.0)
    core.assign(0.0)
    assert core.worker_lost(w1.worker_id, 4.9, reason="worker hung") == []
    core.add_worker(w2, 4.95)
    [out] = core.assign(4.95).ended
    assert out.status is Status.EXPIRED and out.attempts == 1
    assert out.reason.startswith(f"worker hung (worker {w1.worker_id}) while it ran, and "
                                 f"running it again cannot meet its deadline (deadline can no "
                                 f"longer be met: the latest start was")
    # One that never ran says only that its latest start has passed.
    late = make_task(deadline_s=7.0)
    admit(core, late, 5.0)
    blocker = make_task(deadline_s=100.0, priority=Priority.CRITICAL)
    admit(core, blocker, 5.0)
    core.assign(5.0)
    [expired] = core.assign(6.99).ended
    assert expired.task_id == late.task_id and expired.status is Status.EXPIRED
    assert expired.reason.startswith("deadline can no longer be met: the latest start was")


def test_worker_lost_unknown_is_noop() -> None:
    assert make_core().worker_lost("ghost", 0.0) == []


def test_worker_lost_requeues_all_in_flight_keeping_order() -> None:
    big = make_worker(slots=3, concurrency=3)
    core = make_core(big)
    ts = [make_task(priority=p, deadline_s=100.0) for p in (L, M, H)]
    for t in ts:
        admit(core, t, 0.0)
    assert len(core.assign(0.0).assignments) == 3
    assert core.worker_lost(big.worker_id, 1.0) == []
    assert core.queued() == 3
    core.add_worker(make_worker(), 2.0)
    d = core.assign(2.0)
    assert ids(d) == [ts[2].task_id]  # HIGH first again


def test_stale_completion_after_requeue_is_ignored() -> None:
    w1, w2 = make_worker(), make_worker()
    core = make_core(w1)
    t = make_task(deadline_s=100.0)
    admit(core, t, 0.0)
    (a1,) = core.assign(0.0).assignments
    core.worker_lost(w1.worker_id, 1.0)
    assert core.complete(ok(a1), 1.1) is None  # queued now: old worker's report ends nothing
    assert core.state_of(t.task_id) is TaskState.QUEUED
    core.add_worker(w2, 2.0)
    (a2,) = core.assign(2.0).assignments
    assert core.complete(ok(a1), 2.5) is None  # runs on w2 now
    assert core.state_of(t.task_id) is TaskState.RUNNING
    assert core.table.workers[w2.worker_id].free_slots == 0
    out = core.complete(ok(a2), 3.0)
    assert out.status is Status.COMPLETED and out.worker_id == w2.worker_id and out.attempts == 2
    assert core.complete(ok(a2), 3.1) is None
    assert core.counts[Status.COMPLETED] == 1


def test_completion_from_wrong_worker_does_not_free_a_slot() -> None:
    w1, w2 = make_worker(), make_worker()
    core = make_core(w1, w2)
    t = make_task()
    admit(core, t, 0.0)
    (a,) = core.assign(0.0).assignments
    other = w2.worker_id if a.worker_id == w1.worker_id else w1.worker_id
    assert core.complete(ok((t.task_id, other)), 1.0) is None
    assert core.state_of(t.task_id) is TaskState.RUNNING
    assert core.table.free_slots("llm-7b") == 1


def test_completion_of_unknown_task_is_none() -> None:
    w = make_worker()
    core = make_core(w)
    assert core.complete(ok(("ghost", w.worker_id)), 0.0) is None


# -- context length -------------------------------------------------------------------------------


def test_big_task_is_set_aside_without_blocking_small_work() -> None:
    small = make_worker(worker_id="small", max_context_tokens=4096)
    big = make_worker(worker_id="big", max_context_tokens=32768,
                      prior=ServicePrior(fixed_s=0.1, prefill_s_per_token=1e-5))
    core = make_core(small, big)
    hog = make_task(num_prompt_tokens=20000, deadline_s=100.0)
    admit(core, hog, 0.0)
    (a_hog,) = core.assign(0.0).assignments
    assert a_hog.worker_id == "big"
    crit_big = make_task(priority=C, num_prompt_tokens=20000, deadline_s=100.0)
    low_small = make_task(priority=L, deadline_s=100.0)
    admit(core, crit_big, 0.1)
    admit(core, low_small, 0.1)
    d = core.assign(0.2)
    # the CRITICAL cannot run on the small worker: it waits, and the LOW uses the free slot
    assert [(a.task.task_id, a.worker_id) for a in d.assignments] == [(low_small.task_id, "small")]
    assert core.state_of(crit_big.task_id) is TaskState.QUEUED
    core.complete(ok(a_hog), 1.0)
    d = core.assign(1.0)
    assert [(a.task.task_id, a.worker_id) for a in d.assignments] == [(crit_big.task_id, "big")]


def test_set_aside_task_keeps_its_place() -> None:
    small = make_worker(worker_id="small", max_context_tokens=4096)
    big = make_worker(worker_id="big", max_context_tokens=32768)
    core = make_core(small, big, max_skips=1)
    admit(core, make_task(num_prompt_tokens=9000, deadline_s=100.0), 0.0)
    (hog,) = core.assign(0.0).assignments
    first = make_task(priority=H, num_prompt_tokens=9000, deadline_s=50.0)
    second = make_task(priority=H, num_prompt_tokens=9000, deadline_s=50.0)
    admit(core, first, 0.1)
    admit(core, second, 0.1)
    assert core.assign(0.2).assignments == []  # `first` set aside, then the skip budget is spent
    core.complete(ok(hog), 1.0)
    assert [(a.task.task_id, a.worker_id) for a in core.assign(1.0).assignments] == [
        (first.task_id, "big")]  # same deadline: arrival order, as before it was set aside


def test_max_skips_bounds_a_pass() -> None:
    small = make_worker(worker_id="small", max_context_tokens=4096)
    big = make_worker(worker_id="big", max_context_tokens=32768)
    core = make_core(small, big, max_skips=2)
    admit(core, make_task(num_prompt_tokens=9000, deadline_s=100.0), 0.0)
    assert core.assign(0.0).assignments[0].worker_id == "big"
    bigs = [make_task(priority=H, num_prompt_tokens=9000, deadline_s=100.0) for _ in range(3)]
    fits = make_task(priority=L, deadline_s=100.0)
    for t in [*bigs, fits]:
        admit(core, t, 0.1)
    assert core.assign(0.2).assignments == []  # gave up after 2 set-aside tasks
    assert core.queued() == 4
    core.cancel(bigs[0].task_id, 0.3)
    core.cancel(bigs[1].task_id, 0.3)
    assert ids(core.assign(0.3)) == [fits.task_id]  # now within the skip budget


# -- placement ------------------------------------------------------------------------------------


def test_least_completion_time_prefers_faster_prior() -> None:
    fast = make_worker(worker_id="zz-fast", prior=ServicePrior(fixed_s=1.0), slots=2)
    slow = make_worker(worker_id="aa-slow", prior=ServicePrior(fixed_s=3.0), slots=1)
    core = make_core(fast, slow)
    ts = [make_task(deadline_s=100.0) for _ in range(3)]
    for t in ts:
        admit(core, t, 0.0)
    d = core.assign(10.0)
    placed = [(a.worker_id, a.predicted_service_s, a.predicted_finish_s) for a in d.assignments]
    # 1st: fast finishes at +1 < +3; 2nd: fast waits 1 s then 1 s -> +2 < +3; 3rd: fast is full
    assert placed == [("zz-fast", 1.0, 11.0), ("zz-fast", 1.0, 12.0), ("aa-slow", 3.0, 13.0)]


def test_least_completion_time_goes_to_slow_worker_when_fast_is_backlogged() -> None:
    fast = make_worker(worker_id="fast", prior=ServicePrior(fixed_s=1.0), slots=4)
    slow = make_worker(worker_id="slow", prior=ServicePrior(fixed_s=2.5), slots=1)
    core = make_core(fast, slow)
    for _ in range(3):
        admit(core, make_task(deadline_s=100.0), 0.0)
    d = core.assign(0.0)
    # fast: +1, then +2 (waits 1); third: fast would finish +3 > slow +2.5
    assert [a.worker_id for a in d.assignments] == ["fast", "fast", "slow"]


def test_predicted_service_uses_batch_slowdown() -> None:
    prior = ServicePrior(fixed_s=0.0, decode_s_per_step=0.01, batch_slowdown=0.5)
    w = make_worker(prior=prior, slots=2, concurrency=2, max_context_tokens=0)
    core = make_core(w)
    for _ in range(2):
        admit(core, make_task(num_prompt_tokens=0, max_new_tokens=100, deadline_s=100.0), 0.0)
    a1, a2 = core.assign(0.0).assignments
    assert a1.predicted_service_s == pytest.approx(1.0)   # batch 1
    assert a2.predicted_service_s == pytest.approx(1.5)   # batch 2: 1 + 0.5 * 1
    assert a2.predicted_finish_s == pytest.approx(1.5)    # concurrency 2: no wait


def test_make_placement() -> None:
    assert isinstance(make_placement("least_completion"), LeastCompletionTime)
    with pytest.raises(ValueError, match="unknown placement"):
        make_placement("random")


# -- load table and stats -------------------------------------------------------------------------


def test_load_table_free_slots_and_stats() -> None:
    w1 = make_worker(worker_id="w1", slots=4, concurrency=2)
    w2 = make_worker(worker_id="w2", slots=1, concurrency=1)
    core = make_core(w1, w2)
    assert core.table.free_slots("llm-7b") == 5
    assert core.table.free_slots("nope") == 0
    for p in (H, H, M, L, L, L):
        admit(core, make_task(priority=p, deadline_s=1000.0), 0.0)
    d = core.assign(2.0)
    assert len(d.assignments) == 5
    assert core.table.free_slots("llm-7b") == 0
    on_w2 = [a for a in d.assignments if a.worker_id == "w2"]
    assert len(on_w2) == 1
    for a in on_w2:
        core.complete(ok(a), 4.0)
    for a in d.assignments:
        if a.worker_id == "w1":
            core.complete(ok(a), 6.0)
    assert core.table.free_slots("llm-7b") == 5  # no assign pass since: the LOW still waits
    s = core.stats(8.0)
    pool = s.pools["llm-7b"]
    assert pool.workers == 2
    assert pool.in_flight == core.running()
    assert pool.free_slots == core.table.free_slots("llm-7b")
    assert sum(pool.queued.values()) == core.queued("llm-7b") == 1
    assert pool.queued["LOW"] == 1
    assert pool.oldest_wait_s["LOW"] == pytest.approx(8.0)
    assert pool.oldest_wait_s["HIGH"] == 0.0
    ws = s.workers
    assert ws["w1"].completed == 4 and ws["w1"].in_flight == 0 and ws["w1"].free_slots == 4
    # w1 added at 0, busy 2..6 -> 4 / 8; w2 busy 2..4 -> 2 / 8
    assert ws["w1"].utilization == pytest.approx(0.5)
    assert ws["w2"].utilization == pytest.approx(0.25)
    assert pool.utilization == pytest.approx(0.375)
    assert s.results["completed"] == 5 and s.results["rejected"] == 0


def test_utilization_counts_time_still_busy() -> None:
    w = make_worker(worker_id="w")
    core = make_core(w)
    admit(core, make_task(deadline_s=1000.0), 0.0)
    core.assign(6.0)
    assert core.stats(10.0).workers["w"].utilization == pytest.approx(0.4)
    assert core.stats(10.0).workers["w"].backlog_s == pytest.approx(0.46)


def test_pool_totals_after_worker_loss() -> None:
    w1, w2 = make_worker(slots=2, concurrency=2), make_worker(slots=2, concurrency=2)
    core = make_core(w1, w2)
    for _ in range(3):
        admit(core, make_task(deadline_s=1000.0), 0.0)
    core.assign(0.0)
    assert core.table.free_slots("llm-7b") == 1
    lost = w1.worker_id if len(core.table.workers[w1.worker_id].in_flight) == 2 else w2.worker_id
    core.worker_lost(lost, 1.0)
    assert core.table.free_slots("llm-7b") == 1
    assert core.stats(0.0).pools["llm-7b"].workers == 1
    d = core.assign(1.0)
    assert len(d.assignments) == 1 and core.table.free_slots("llm-7b") == 0
    assert core.queued() == 1


# -- regressions: re-pushing a task with its seq tied with its dead heap item (TypeError) ---------


def test_worker_lost_requeue_of_lone_task() -> None:
    w = make_worker()
    core = make_core(w)
    t = make_task()
    admit(core, t, 0.0)
    core.assign(0.0)
    assert core.worker_lost(w.worker_id, 1.0) == []
    assert core.state_of(t.task_id) is TaskState.QUEUED
    core.add_worker(make_worker(), 1.0)
    assert ids(core.assign(1.0)) == [t.task_id]


def test_retryable_requeue_of_lone_task() -> None:
    core = make_core(make_worker())
    admit(core, make_task(), 0.0)
    (a,) = core.assign(0.0).assignments
    assert core.complete(failed(a, retryable=True), 1.0) is None
    (a2,) = core.assign(1.0).assignments
    assert a2.task == a.task and a2.attempt == 2


def test_set_aside_lone_critical_is_put_back() -> None:
    small = make_worker(max_context_tokens=4096)
    big = make_worker(max_context_tokens=32768)
    core = make_core(small, big)
    admit(core, make_task(num_prompt_tokens=20000, deadline_s=100.0), 0.0)
    core.assign(0.0)  # the big worker is now busy
    crit = make_task(priority=C, num_prompt_tokens=20000, deadline_s=100.0)
    admit(core, crit, 0.1)
    admit(core, make_task(priority=L, deadline_s=100.0), 0.1)
    assert len(core.assign(0.2).assignments) == 1
    assert core.state_of(crit.task_id) is TaskState.QUEUED


def test_min_context_tokens_filters_workers() -> None:
    small_fast = make_worker(worker_id="small", max_context_tokens=4096,
                             prior=ServicePrior(fixed_s=0.1))
    big_slow = make_worker(worker_id="big", max_context_tokens=32768,
                           prior=ServicePrior(fixed_s=1.0))
    core = make_core(small_fast, big_slow)
    t = make_task(min_context_tokens=16000, deadline_s=100.0)
    assert admit(core, t, 0.0) is None
    (a,) = core.assign(0.0).assignments
    assert a.worker_id == "big"


def test_unholdable_best_effort_admitted_to_empty_pool_still_ends() -> None:
    core = make_core()
    core.add_pool("llm-7b")
    t = make_task(num_prompt_tokens=40000, best_effort=True)
    assert admit(core, t, 0.0) is None  # pool empty: admitted to wait for a worker
    core.add_worker(make_worker(max_context_tokens=8192), 1.0)
    ended = []
    for now in (1.0, 10.0, 1e6):
        d = core.assign(now)
        assert d.assignments == []
        ended += d.ended
    # "Every accepted or refused task ends in exactly one of these" (types.Status)
    assert [o.task_id for o in ended] == [t.task_id]


def test_unholdable_tasks_do_not_starve_the_pool() -> None:
    core = make_core(max_skips=2)
    core.add_pool("llm-7b")
    for _ in range(2):
        assert admit(core, make_task(priority=H, num_prompt_tokens=40000, best_effort=True),
                           0.0) is None
    core.add_worker(make_worker(max_context_tokens=8192), 1.0)
    small = make_task(priority=L, deadline_s=1000.0)
    assert admit(core, small, 1.0) is None
    assigned = []
    for now in (1.0, 2.0, 100.0, 900.0):
        assigned += ids(core.assign(now))
    assert assigned == [small.task_id]


def test_lct_within_group_picks_earliest_finish() -> None:
    prior = ServicePrior(fixed_s=0.0, decode_s_per_step=0.01)
    core = make_core(*(make_worker(worker_id=w, pool="p", slots=3, prior=prior,
                                   max_context_tokens=0) for w in ("w1", "w2")))

    def t(n: int):
        return make_task(pool="p", priority=H, deadline_s=1000.0, num_prompt_tokens=0,
                         max_new_tokens=n)

    admit(core, t(1000), 0.0)                     # 10 s on w1
    assert [a.worker_id for a in core.assign(0.0).assignments] == ["w1"]
    admit(core, t(100), 0.0)
    admit(core, t(100), 0.0)                      # 1 s + 1 s on w2
    assert [a.worker_id for a in core.assign(0.0).assignments] == ["w2", "w2"]
    admit(core, t(100), 0.0)
    (a,) = core.assign(0.0).assignments
    # w1 predicts 10 + 1 = 11 s, w2 predicts 2 + 1 = 3 s: "earliest predicted finish" is w2
    assert (a.worker_id, a.predicted_finish_s) == ("w2", pytest.approx(3.0))


class _Waits(LeastCompletionTime):
    """A placement that says the tasks named in ``waiting`` are to wait for a full worker
    (``Choice.waits``), as ``AdaptivePlacement`` does for a task that misses on every free one."""

    def __init__(self, waiting: set[str]) -> None:
        super().__init__()
        self.waiting = waiting

    def place(self, task, table, now_s):
        choice = super().place(task, table, now_s)
        if choice is not None and task.task_id in self.waiting:
            choice.waits = True
        return choice


def test_a_task_told_to_wait_stays_queued_and_its_latest_start_ends_the_wait():
    core = SchedulerCore(placement=_Waits({"waits"}))
    core.add_worker(make_worker(worker_id="w", slots=2, concurrency=2), 0.0)
    waits = make_task(task_id="waits", priority=Priority.HIGH, deadline_s=2.0)
    behind = make_task(task_id="behind", priority=Priority.LOW, deadline_s=100.0)
    admit(core, waits, 0.0)
    admit(core, behind, 0.0)
    # The slot it would take goes to the task behind it, in the same pass; it keeps its place.
    d = core.assign(0.0)
    assert [a.task.task_id for a in d.assignments] == ["behind"] and not d.ended
    assert core.state_of("waits") is TaskState.QUEUED
    # Its latest start passes: it expires, once, with its reason.
    d = core.assign(1.99)
    assert [o.task_id for o in d.ended] == ["waits"]
    assert d.ended[0].status is Status.EXPIRED and not d.assignments
    assert core.state_of("waits") is None and core.assign(1.99) == Decisions([], [], [])


@pytest.mark.parametrize("why", ["best_effort", "spared", "no_admission"])
def test_a_task_that_may_not_be_refused_runs_where_placement_chose_rather_than_wait(why):
    # It has no latest start to end a wait, so it would wait for ever.
    core = SchedulerCore(CoreConfig(admission=why != "no_admission"),
                         placement=_Waits({"waits"}))
    core.add_worker(make_worker(worker_id="w"), 0.0)
    task = make_task(task_id="waits", deadline_s=2.0, best_effort=why == "best_effort")
    if why == "spared":
        core.spared = frozenset({"waits"})
    admit(core, task, 0.0)
    assert [(a.task.task_id, a.worker_id) for a in core.assign(0.0).assignments] == [
        ("waits", "w")]
