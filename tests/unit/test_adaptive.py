"""The learned service-time model and the adaptive placement (pure, no Ray)."""

from __future__ import annotations

import random

import pytest

from raysched.core.adaptive import AdaptiveEstimator, AdaptivePlacement
from raysched.core.load import LoadTable, WorkerLoad
from raysched.core.policies import build_core
from raysched.core.scheduler import SchedulerCore
from raysched.core.types import CoreTask, Priority, ServicePrior, Status, TaskState, WorkerSpec
from raysched.sim import SimLLMWorker, SimTask, Simulator
from tests.builders import admit, make_task, make_worker, ok

PRIOR = ServicePrior(fixed_s=0.001, prefill_s_per_token=1e-4, decode_s_per_step=0.01,
                     batch_slowdown=0.01)


def observed(estimator: AdaptiveEstimator, worker: WorkerLoad, speed: float,
             rng: random.Random, kind: str = "summarization") -> None:
    """One completion on ``worker`` that took ``speed`` times the prior's figure (with 5%
    noise), for a task of random size in a batch of random size."""
    prompt, new, batch = rng.randint(100, 1000), rng.randint(10, 100), rng.randint(1, 4)
    t = make_task(task_id=f"t{rng.random()}", kind=kind, pool="p", num_prompt_tokens=prompt,
                  max_new_tokens=new)
    estimator.model(kind, worker)
    took_s = speed * PRIOR.service_s(prompt, new, batch) * rng.lognormvariate(0.0, 0.05)
    estimator.observe(t, ok((t.task_id, worker.worker_id), service_s=took_s,
                            num_generated_tokens=new, batch_size=batch), 0.0)


def test_the_speed_model_converges_to_a_known_factor_whatever_the_batch_and_size():
    table = make_table(worker("w"))
    est, rng = AdaptiveEstimator(), random.Random(0)
    for _ in range(300):
        observed(est, table.workers["w"], 1.7, rng)
    m = est.model("summarization", table.workers["w"])
    assert m.factor == pytest.approx(1.7, rel=0.03)
    assert m.sd() < 0.01


def test_the_speed_model_tracks_a_slowdown_within_tens_of_completions():
    table = make_table(worker("w"))
    est, rng = AdaptiveEstimator(forget=0.95), random.Random(1)
    for _ in range(100):
        observed(est, table.workers["w"], 1.0, rng)
    probe = make_task(task_id="probe", kind="summarization", pool="p", num_prompt_tokens=500,
                      max_new_tokens=50)
    before_s = est.service_s(probe, table.workers["w"])
    for _ in range(30):
        observed(est, table.workers["w"], 3.0, rng)
    assert est.service_s(probe, table.workers["w"]) == pytest.approx(3 * before_s, rel=0.15)


def test_identical_workers_learn_the_same_model() -> None:
    # Four identical 7B workers under real continuous batching (prefill stalls and all): their
    # learned factors agree, so placement tells them apart by load alone.
    rng = random.Random(5)
    tasks, t = [], 0.0
    for i in range(3000):
        t += rng.expovariate(12.0)
        core = make_task(task_id=f"s{i}", priority=Priority.HIGH, deadline_s=t + 30.0,
                         num_prompt_tokens=rng.randint(200, 1500), max_new_tokens=64)
        tasks.append(SimTask(t, core, true_new_tokens=rng.randint(8, 64)))
    workers = {f"w{i}": ("llm-7b", SimLLMWorker(f"w{i}", "7b", 16)) for i in range(4)}
    core = build_core("raysched")
    Simulator(core, workers).run(tasks)
    est = core.placement.estimator
    factors = [est.factor("summarization", core.table.workers[w]) for w in sorted(workers)]
    assert max(factors) / min(factors) < 1.1, factors
    own = [est.model("summarization", core.table.workers[w]).factor for w in sorted(workers)]
    assert max(own) / min(own) < 1.4, own


def make_table(*specs: WorkerSpec) -> LoadTable:
    table = LoadTable()
    for s in specs:
        table.add(s, 0.0)
    return table


def worker(worker_id: str, prior: ServicePrior = PRIOR) -> WorkerSpec:
    """A worker of pool "p" with four slots, four at a time, no context limit."""
    return make_worker(worker_id=worker_id, pool="p", slots=4, concurrency=4, prior=prior,
                       max_context_tokens=0)


def task(prio: Priority, deadline_s: float, task_id: str = "t") -> CoreTask:
    return make_task(task_id=task_id, priority=prio, deadline_s=deadline_s, pool="p",
                     num_prompt_tokens=200, max_new_tokens=50)


def test_critical_never_explores_into_a_worker_predicted_to_miss():
    table = make_table(worker("known"), worker("fresh"))
    est = AdaptiveEstimator()
    placement = AdaptivePlacement(est, explore=10.0, max_bonus=0.9)
    known, fresh = table.workers["known"], table.workers["fresh"]
    # "known" has been seen a lot and is as the prior says; "fresh" has two slow observations.
    for i in range(50):
        est.model("summarization", known)
        est.observe(task(Priority.HIGH, 1e9),
                    ok((f"k{i}", "known"), service_s=0.52, num_generated_tokens=50), 0.0)
    est.model("summarization", fresh)
    for i in range(2):
        est.observe(task(Priority.HIGH, 1e9),
                    ok((f"f{i}", "fresh"), service_s=0.9, num_generated_tokens=50), 0.0)
    probe = task(Priority.HIGH, 1e9)
    assert est.service_s(probe, fresh) > est.service_s(probe, known)
    # A HIGH task with slack explores the uncertain worker...
    assert placement.place(task(Priority.HIGH, 100.0), table, 0.0).worker.worker_id == "fresh"
    # ...a CRITICAL one whose deadline only "known" is predicted to meet never does.
    deadline = 0.5 * (est.service_s(task(Priority.CRITICAL, 0), known)
                      + est.service_s(task(Priority.CRITICAL, 0), fresh))
    for _ in range(20):
        choice = placement.place(task(Priority.CRITICAL, deadline), table, 0.0)
        assert choice.worker.worker_id == "known"


def test_low_work_with_slack_leaves_the_fast_worker_free():
    fast = ServicePrior(fixed_s=0.001, decode_s_per_step=0.005)
    slow = ServicePrior(fixed_s=0.001, decode_s_per_step=0.02)
    table = make_table(worker("fast", fast), worker("slow", slow))
    placement = AdaptivePlacement()
    assert placement.place(task(Priority.LOW, 100.0), table, 0.0).worker.worker_id == "slow"
    assert placement.place(task(Priority.HIGH, 100.0), table, 0.0).worker.worker_id == "fast"
    # Without the slack to spare, LOW work takes the earliest finish too.
    assert placement.place(task(Priority.LOW, 1.2), table, 0.0).worker.worker_id == "fast"


def test_a_slowed_worker_gets_fewer_placements():
    """At moderate load several workers are free at once, so placement, not just slot turnover,
    decides; the learned model moves work off the slowed worker, load balancing does not."""
    rng = random.Random(3)
    tasks, t = [], 0.0
    for i in range(4000):
        t += rng.expovariate(8.0)
        core = make_task(task_id=f"s{i}", priority=Priority.HIGH, deadline_s=t + 10.0,
                         num_prompt_tokens=rng.randint(200, 600), max_new_tokens=48)
        tasks.append(SimTask(t, core, true_new_tokens=rng.randint(16, 48)))
    drift_s = tasks[2000].arrival_s

    def shares(policy):
        workers = {f"w{i}": ("llm-7b", SimLLMWorker(f"w{i}", "7b", 8)) for i in range(3)}
        run = Simulator(build_core(policy), workers).run(tasks,
                                                         speed_changes=[(drift_s, "w0", 3.0)])
        done = [o for o in run.outcomes if o.status.value == "completed"]
        before = [o for o in done if o.start_s < drift_s]
        after = [o for o in done if o.start_s > drift_s + 5.0]
        return (sum(o.worker_id == "w0" for o in before) / len(before),
                sum(o.worker_id == "w0" for o in after) / len(after))

    learned_before, learned_after = shares("raysched")
    _, balanced_after = shares("edf")  # least-loaded placement, no learning
    assert learned_before > 0.25
    assert learned_after < 0.25 * learned_before
    assert learned_after < 0.5 * balanced_after


def test_a_task_the_prefill_ahead_makes_miss_everywhere_expires_at_once() -> None:
    # One 7B worker (batch 16) given 10 prompts of 7,000 tokens: about 6.5 s of prefill ahead
    # of anything placed next. A short task due in 1 s is feasible on an idle worker (admitted)
    # but misses behind that backlog, so it ends expired at once instead of taking a slot;
    # with admission off (the counterfactual replay) it runs.
    prior = SimLLMWorker("probe", "7b", 16).prior
    for admission, expect in ((True, "expired"), (False, "running")):
        core = build_core("raysched", admission=admission)
        core.add_worker(make_worker(worker_id="w", slots=16, concurrency=16, prior=prior,
                                    max_context_tokens=32_768), 0.0)
        for i in range(10):
            core.submit(make_task(task_id=f"long{i}", deadline_s=600.0,
                                  num_prompt_tokens=7_000, max_new_tokens=16), 0.0)
        assert len(core.assign(0.0).assignments) == 10
        short = make_task(task_id="short", priority=Priority.HIGH, deadline_s=1.0,
                          num_prompt_tokens=100, max_new_tokens=16)
        assert core.submit(short, 0.01) == []
        ended = core.assign(0.01).ended
        if expect == "expired":
            assert [(o.task_id, o.status.value) for o in ended] == [("short", "expired")]
            assert "queued ahead" in ended[0].reason
        else:
            assert ended == [] and core.state_of("short") is TaskState.RUNNING


def test_a_short_task_goes_where_the_batch_reads_less_kv_cache() -> None:
    # Two idle-enough 7B workers, eight sequences each: on one, long prompts with short answers
    # (about 64k tokens of KV cache); on the other, short prompts with long answers (about 8k).
    # Their prefill is long done. A summary placed on the first decodes about 40% slower per
    # step (the roofline reads the KV cache every step), so it goes to the second, although
    # that one holds more work by the load table's count.
    prior = SimLLMWorker("probe", "7b", 16).prior
    table = make_table(*(make_worker(worker_id=w, pool="p", slots=16, concurrency=16,
                                     prior=prior, max_context_tokens=32_768)
                         for w in ("long-contexts", "short-contexts")))
    est = AdaptiveEstimator()
    placement = AdaptivePlacement(est, explore=0.0)
    for i in range(8):
        for wid, prompt, new in (("long-contexts", 8_000, 64), ("short-contexts", 100, 2_000)):
            t = make_task(task_id=f"{wid}{i}", pool="p", num_prompt_tokens=prompt,
                          max_new_tokens=new, deadline_s=1e4)
            w = table.workers[wid]
            table.start(t.task_id, wid, est.service_s(t, w), 0.0)
            est.started(t, w, 0.0)
    assert table.workers["long-contexts"].backlog_s < table.workers["short-contexts"].backlog_s
    summary = make_task(task_id="summary", priority=Priority.HIGH, pool="p",
                        num_prompt_tokens=500, max_new_tokens=48, deadline_s=1e4)
    long_w, short_w = table.workers["long-contexts"], table.workers["short-contexts"]
    assert est.service_s(summary, long_w) > 1.3 * est.service_s(summary, short_w)
    choice = placement.place(summary, table, 60.0)
    assert choice is not None and choice.worker.worker_id == "short-contexts"


def test_a_decode_step_at_typical_contexts_is_the_batch_model_s() -> None:
    # The two decode models of the roofline prior agree where the batch model was figured: a
    # batch of sequences each at the typical context.
    prior = SimLLMWorker("probe", "7b", 16).prior
    for batch in (1, 2, 8, 16):
        assert prior.decode_step_s(batch, batch * prior.context_tokens) == pytest.approx(
            prior.decode_step_s(batch), rel=1e-9)
    assert prior.decode_step_s(1, 32_000) > 1.2 * prior.decode_step_s(1)


def test_a_task_in_a_victims_place_is_figured_without_the_victim() -> None:
    # A preemption's victim is still in the load table when the core asks what the urgent
    # task would take in its place: the figure leaves out the victim's KV cache and slot.
    prior = SimLLMWorker("probe", "7b", 16).prior
    table = make_table(make_worker(worker_id="w", pool="p", slots=2, concurrency=2,
                                   prior=prior, max_context_tokens=32_768))
    est, w = AdaptiveEstimator(), table.workers["w"]
    for i in range(2):
        t = make_task(task_id=f"low{i}", pool="p", num_prompt_tokens=12_000,
                      max_new_tokens=1_500, deadline_s=1e4)
        table.start(t.task_id, "w", est.service_s(t, w), 0.0)
        est.started(t, w, 0.0)
    crit = make_task(task_id="crit", priority=Priority.CRITICAL, pool="p",
                     num_prompt_tokens=10, max_new_tokens=200, deadline_s=1e4)
    both, instead = est.service_s(crit, w), est.service_s(crit, w, instead_of="low0")
    alone = est.service_s(crit, make_table(make_worker(
        worker_id="idle", pool="p", slots=2, concurrency=2, prior=prior,
        max_context_tokens=32_768)).workers["idle"])
    assert alone < instead < both


def _backlogged_and_full(full_prompt_tokens: int) -> tuple[LoadTable, AdaptiveEstimator]:
    """Two 7B workers: "a-free" has a free slot behind three 8,000-token prompts still to
    compute (over 2 s of prefill); "b-full" has none, its one slot running a task with a
    ``full_prompt_tokens`` prompt and a 4-token answer, started at 0."""
    prior = SimLLMWorker("probe", "7b", 4).prior
    table = make_table(
        make_worker(worker_id="a-free", pool="p", slots=4, concurrency=4, prior=prior,
                    max_context_tokens=32_768),
        make_worker(worker_id="b-full", pool="p", slots=1, concurrency=1, prior=prior,
                    max_context_tokens=32_768))
    est = AdaptiveEstimator()
    running = [("a-free", f"long{i}", 8_000, 16) for i in range(3)]
    running.append(("b-full", "short", full_prompt_tokens, 4))
    for wid, tid, prompt, new in running:
        t = make_task(task_id=tid, pool="p", num_prompt_tokens=prompt, max_new_tokens=new,
                      deadline_s=1e4)
        w = table.workers[wid]
        table.start(tid, wid, est.service_s(t, w), 0.0)
        est.started(t, w, 0.0)
    return table, est


def test_a_task_that_would_miss_on_the_free_worker_waits_for_one_that_may_make_it() -> None:
    # A HIGH task due in 0.4 s: behind the free worker's prefill it would end past its
    # deadline (by the confident bound), but "b-full" can free its slot within 0.03 s. It is
    # to wait (the core leaves it queued rather than take a slot on "a-free" for work it
    # misses), not to be expired.
    table, est = _backlogged_and_full(50)
    task = make_task(task_id="h", priority=Priority.HIGH, pool="p", num_prompt_tokens=200,
                     max_new_tokens=8, deadline_s=0.4)
    free, full = table.workers["a-free"], table.workers["b-full"]
    assert est.earliest_finish_s(task, free, 0.0) > task.deadline_s
    slot_s = est.earliest_slot_s(full, 0.0)
    assert slot_s is not None and slot_s + est.least_service_s(task, full) < task.deadline_s
    choice = AdaptivePlacement(est, explore=0.0).place(task, table, 0.0)
    assert choice is not None and choice.waits and not choice.misses
    assert choice.worker is free


def test_a_task_that_misses_on_every_worker_is_ended_at_once() -> None:
    # The same, but "b-full" runs a 16,000-token prompt: it cannot free its slot in time
    # either, so the task misses everywhere and placement says so (the core expires it).
    table, est = _backlogged_and_full(16_000)
    task = make_task(task_id="h", priority=Priority.HIGH, pool="p", num_prompt_tokens=200,
                     max_new_tokens=8, deadline_s=0.4)
    slot_s = est.earliest_slot_s(table.workers["b-full"], 0.0)
    assert slot_s is not None and slot_s > task.deadline_s
    choice = AdaptivePlacement(est, explore=0.0).place(task, table, 0.0)
    assert choice is not None and choice.misses and not choice.waits


def _one_long_run_ahead() -> tuple[SchedulerCore, AdaptiveEstimator, WorkerLoad]:
    """A raysched core with one worker of two slots, one taken by a LOW task whose 5,000-token
    prompt (0.5 s of prefill on ``PRIOR``) is still ahead of anything placed next."""
    core = build_core("raysched")
    core.add_worker(make_worker(worker_id="w", slots=2, concurrency=2, prior=PRIOR,
                                max_context_tokens=32_768), 0.0)
    core.submit(make_task(task_id="long", priority=Priority.LOW, deadline_s=600.0,
                          num_prompt_tokens=5_000, max_new_tokens=200), 0.0)
    assert [a.task.task_id for a in core.assign(0.0).assignments] == ["long"]
    placement = core.placement
    assert isinstance(placement, AdaptivePlacement)
    return core, placement.estimator, core.table.workers["w"]


def _likely_late(est: AdaptiveEstimator, w: WorkerLoad, now_s: float) -> CoreTask:
    """A HIGH task due between the confident lower bound of its finish on ``w`` and the central
    estimate: it may make it, but is likely late."""
    probe = make_task(task_id="probe", priority=Priority.HIGH, num_prompt_tokens=100,
                      max_new_tokens=20)
    low_s, likely_s = est.earliest_finish_s(probe, w, now_s), est.likely_finish_s(probe, w, now_s)
    assert low_s < likely_s
    return make_task(task_id="late", priority=Priority.HIGH, num_prompt_tokens=100,
                     max_new_tokens=20, deadline_s=(low_s + likely_s) / 2)


def test_a_likely_late_task_lets_one_likely_on_time_have_the_slot_first() -> None:
    # One free slot, two HIGH tasks queued: the first by deadline is likely late wherever it
    # runs (not surely: it is admitted and not expired), the second has time. The second takes
    # the slot; the first keeps its place in the queue.
    core, est, w = _one_long_run_ahead()
    late = _likely_late(est, w, 0.01)
    on_time = make_task(task_id="on-time", priority=Priority.HIGH, num_prompt_tokens=100,
                        max_new_tokens=20, deadline_s=600.0)
    assert admit(core, late, 0.01) is None and admit(core, on_time, 0.01) is None
    decisions = core.assign(0.01)
    assert [a.task.task_id for a in decisions.assignments] == ["on-time"]
    assert decisions.ended == [] and core.state_of("late") is TaskState.QUEUED


def test_a_likely_late_task_runs_on_a_slot_nobody_else_wants() -> None:
    # The same task alone in the queue runs at once: it may still make its deadline, and the
    # slot has no better use.
    core, est, w = _one_long_run_ahead()
    late = _likely_late(est, w, 0.01)
    assert admit(core, late, 0.01) is None
    assert [a.task.task_id for a in core.assign(0.01).assignments] == ["late"]


def _one_busy_worker(first: CoreTask) -> SchedulerCore:
    """A raysched core whose one worker (``PRIOR``, one slot) runs ``first`` from t = 0."""
    core = build_core("raysched")
    core.add_worker(make_worker(worker_id="w", prior=PRIOR, max_context_tokens=32_768), 0.0)
    assert admit(core, first, 0.0) is None
    assert [a.task.task_id for a in core.assign(0.0).assignments] == [first.task_id]
    return core


def test_a_task_whose_planned_answer_grew_while_queued_expires_instead_of_starting_late(
) -> None:
    # Answers of 20 of 200 tokens so far: queued at 1.6 s with 1.6 s to go, the task plans
    # with 0.2 s. An answer of all 200 tokens then ends at 2.011 s and the plan becomes 2 s,
    # past the 1.2 s left: started, it would end late; it expires instead, saying why.
    core = _one_busy_worker(make_task(task_id="short", max_new_tokens=200))
    assert core.complete(ok(("short", "w"), service_s=0.211, num_prompt_tokens=100,
                             num_generated_tokens=20), 0.211) is not None
    assert admit(core, make_task(task_id="long", max_new_tokens=200), 0.211) is None
    assert [a.task.task_id for a in core.assign(0.211).assignments] == ["long"]
    queued = make_task(task_id="queued", max_new_tokens=200, deadline_s=3.2)
    assert admit(core, queued, 1.6) is None
    assert core.assign(1.6).assignments == []
    core.complete(ok(("long", "w"), service_s=2.011, num_prompt_tokens=100,
                     num_generated_tokens=200), 2.222)
    decisions = core.assign(2.222)
    assert decisions.assignments == []
    [expired] = decisions.ended
    assert expired.task_id == "queued" and expired.status is Status.EXPIRED
    assert "as planned" in expired.reason


def test_a_task_whose_planned_answer_shrank_while_queued_still_starts() -> None:
    # No answers seen yet: queued at 0 with 2.5 s to go, the task plans with all 200 tokens
    # (2 s), so by that plan it must start by 0.49 s. The first answer, 20 of 200 tokens, comes
    # at 0.711 s: the plan is 0.2 s now, and the task starts with 1.8 s left.
    core = _one_busy_worker(make_task(task_id="first", max_new_tokens=200,
                                      num_prompt_tokens=5_000))
    assert admit(core, make_task(task_id="queued", max_new_tokens=200, deadline_s=2.5),
                 0.0) is None
    core.complete(ok(("first", "w"), service_s=0.711, num_prompt_tokens=5_000,
                     num_generated_tokens=20), 0.711)
    decisions = core.assign(0.711)
    assert decisions.ended == []
    assert [a.task.task_id for a in decisions.assignments] == ["queued"]


def test_a_task_queued_on_a_worker_learned_slower_meanwhile_expires_instead_of_starting_late(
) -> None:
    # Queued with 1.1 s to go, the task plans with its prior's 0.211 s. The task ahead then
    # takes three times its prior: the worker's engine model plans 0.62 s for it now, past
    # the 0.5 s left, though by the old figure it would still have 0.29 s to spare. (The
    # placement's own lower bound on its finish says so too: either ends it.)
    core = _one_busy_worker(make_task(task_id="first", max_new_tokens=20))
    assert admit(core, make_task(task_id="queued", max_new_tokens=20, deadline_s=1.133),
                 0.0) is None
    core.complete(ok(("first", "w"), service_s=0.633, num_prompt_tokens=100,
                     num_generated_tokens=20), 0.633)
    decisions = core.assign(0.633)
    assert decisions.assignments == []
    [expired] = decisions.ended
    assert expired.task_id == "queued" and expired.status is Status.EXPIRED


CPU_PRIOR = ServicePrior(fixed_s=0.01, prefill_s_per_token=0.0, decode_s_per_step=0.0)


def _cpu_task(task_id: str, deadline_s: float) -> CoreTask:
    return make_task(task_id=task_id, kind="compute", priority=Priority.HIGH, pool="cpu",
                     num_prompt_tokens=0, max_new_tokens=0, deadline_s=deadline_s)


def test_a_refusal_that_rests_on_one_slow_call_is_probed_and_corrected() -> None:
    # One 10 s call of a kind whose calls take 1 ms teaches worker "a" that the kind is slow;
    # worker "b" dies and its replacement "c" starts from the kind's mean. Fast tasks due in
    # 2 s are then refused by the learned figures, though the prior says an idle worker makes
    # it in 10 ms: one is admitted as a probe, the others are refused while it is in the
    # scheduler, and once it has completed in 1 ms the next ones are admitted on their own.
    core = build_core("raysched")
    for wid in ("a", "b"):
        core.add_worker(make_worker(worker_id=wid, pool="cpu", prior=CPU_PRIOR), 0.0)
    assert admit(core, _cpu_task("slow", 600.0), 0.0) is None
    [first] = core.assign(0.0).assignments
    assert first.worker_id == "a"
    assert core.complete(ok(first, service_s=10.0), 10.0) is not None
    core.worker_lost("b", 10.0)
    core.add_worker(make_worker(worker_id="c", pool="cpu", prior=CPU_PRIOR), 10.0)

    assert admit(core, _cpu_task("probe", 12.0), 10.0) is None
    refused = admit(core, _cpu_task("refused", 12.0), 10.0)
    assert refused is not None and refused.status is Status.REJECTED
    assert "infeasible deadline" in refused.reason
    [probe] = core.assign(10.0).assignments
    assert probe.task.task_id == "probe"
    done = core.complete(ok(probe, service_s=0.001), 10.001)
    assert done is not None and done.status is Status.COMPLETED

    # Two at once: a probe would have been one.
    for task_id in ("after-1", "after-2"):
        assert admit(core, _cpu_task(task_id, 12.1), 10.1) is None
    decisions = core.assign(10.1)
    assert decisions.ended == [] and decisions.assignments


def test_no_probe_where_the_prior_refuses_too() -> None:
    # A deadline an idle worker misses on the prior as well is refused outright: probing is for
    # refusals that rest on what was learned alone.
    core = build_core("raysched")
    core.add_worker(make_worker(worker_id="a", pool="cpu", prior=CPU_PRIOR), 0.0)
    refused = admit(core, _cpu_task("tight", 0.005), 0.0)
    assert refused is not None and refused.status is Status.REJECTED


def test_a_worker_that_has_run_nothing_yet_is_figured_as_its_peers_learned() -> None:
    # Two fast calls teach "a" that the kind takes 0.1 ms (its prior says 10 ms); "b" has run
    # none. Two calls then come at once: the second goes to the idle "b", not behind the
    # first on "a", since "b" is figured at what "a" learned rather than at its prior.
    core = build_core("raysched")
    for wid in ("a", "b"):
        core.add_worker(make_worker(worker_id=wid, pool="cpu", prior=CPU_PRIOR, slots=2), 0.0)
    now_s = 0.0
    for i in range(2):
        assert admit(core, _cpu_task(f"fast-{i}", now_s + 60.0), now_s) is None
        [a] = core.assign(now_s).assignments
        assert a.worker_id == "a"
        now_s += 0.001
        assert core.complete(ok(a, service_s=1e-4), now_s) is not None
    for i in range(2):
        assert admit(core, _cpu_task(f"next-{i}", now_s + 60.0), now_s) is None
    assert sorted(a.worker_id for a in core.assign(now_s).assignments) == ["a", "b"]
