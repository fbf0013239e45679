"""The engine's cost model: two factors (prefill, decode) over the roofline prior, learned per
worker by a Kalman filter from completions (pure, no Ray)."""

from __future__ import annotations

import math
import random

import pytest

from raysched.core.adaptive import AdaptiveEstimator
from raysched.core.engine_model import PRIOR_LOG_SD, EngineModel, EngineModelSet

FORGET = 0.99


def learn(m: EngineModel, prefill: float, decode: float, n: int, rng: random.Random,
          shares: tuple[float, float] = (0.05, 0.95), noise: float = 0.05) -> None:
    """``n`` completions of work whose prior figure is a random share of prefill, on an engine
    ``prefill`` times slower than the prior at prefill and ``decode`` times at the rest."""
    for _ in range(n):
        share = rng.uniform(*shares)
        truth = share * prefill + (1.0 - share) * decode
        m.update(share, truth * rng.lognormvariate(0.0, noise), FORGET)


def test_both_factors_are_learned_from_requests_of_mixed_shape() -> None:
    # An L4 in place of the A100 its prior assumes: 2.6 times slower at compute (prefill),
    # 6.8 times at memory bandwidth (decode).
    m, rng = EngineModel(), random.Random(0)
    learn(m, 2.6, 6.8, 300, rng)
    assert m.prefill_factor == pytest.approx(2.6, rel=0.1)
    assert m.decode_factor == pytest.approx(6.8, rel=0.05)
    for share in (0.05, 0.5, 0.95):
        assert m.ratio(share) == pytest.approx(share * 2.6 + (1 - share) * 6.8, rel=0.03)
        assert m.sd(share) < 0.03


def test_a_direction_no_completion_speaks_of_stays_at_the_prior() -> None:
    # Every request is 90% prefill: the figure at that shape is learned; pure decode, never
    # seen apart from it, keeps most of the prior's spread.
    m, rng = EngineModel(), random.Random(1)
    learn(m, 2.0, 2.0, 200, rng, shares=(0.9, 0.9), noise=0.02)
    assert m.ratio(0.9) == pytest.approx(2.0, rel=0.02)
    assert m.sd(0.9) < 0.02
    assert m.sd(0.0) > 10 * m.sd(0.9)


def test_noisy_completions_of_a_worker_as_its_prior_says_keep_both_factors_near_one() -> None:
    # Completions exactly as the prior says, with 30% noise, of every shape: neither factor
    # may wander off (a filter on the factors themselves drove one to zero in some runs and
    # left it there, its spread shrunk with it).
    for seed in range(30):
        m, rng = EngineModel(), random.Random(seed)
        learn(m, 1.0, 1.0, 500, rng, shares=(0.0, 1.0), noise=0.3)
        assert 0.6 < m.prefill_factor < 1.6 and 0.6 < m.decode_factor < 1.6, seed


def test_a_slowdown_is_tracked_within_tens_of_completions() -> None:
    m, rng = EngineModel(), random.Random(2)
    learn(m, 1.0, 1.0, 200, rng)
    learn(m, 3.0, 3.0, 30, rng)
    for share in (0.1, 0.9):
        assert m.ratio(share) == pytest.approx(3.0, rel=0.15)


def test_an_outlier_is_not_learned_until_it_repeats() -> None:
    m, rng = EngineModel(), random.Random(3)
    learn(m, 1.0, 1.0, 100, rng, noise=0.02)
    before = m.ratio(0.5)
    m.update(0.5, 5.0, FORGET)
    assert m.ratio(0.5) == pytest.approx(before)


def test_the_spread_never_widens_past_the_prior_s() -> None:
    # Forgetting widens the spread of a direction no completion speaks of, but not without
    # bound: a model that sees nothing for a long time is as unsure as a new one, not more.
    m = EngineModel()
    for _ in range(2000):
        m.update(1.0, 1.0, FORGET)
    assert m.sd(0.0) <= PRIOR_LOG_SD + 1e-9
    assert math.isfinite(m.decode_factor)


def test_like_workers_share_their_group_s_mean_and_an_unlike_one_keeps_its_own() -> None:
    models, rng = EngineModelSet(), random.Random(4)
    def run(wid: str, speed: float) -> EngineModel:
        for _ in range(100):
            models.learn(("pool p", wid), rng.random(), speed * rng.lognormvariate(0.0, 0.05),
                         FORGET)
        return models.get(("pool p", wid))

    a, b, _ = run("a", 1.0), run("b", 1.05), run("c", 0.97)
    shared_a = models.shared(("pool p", "a"), a, 0.5, own_ratio=1.4)
    assert shared_a == pytest.approx(models.shared(("pool p", "b"), b, 0.5, own_ratio=1.4))
    assert shared_a == pytest.approx(1.0, rel=0.05) and shared_a != a.ratio(0.5)
    slow = run("slow", 3.0)
    assert models.shared(("pool p", "slow"), slow, 0.5, own_ratio=1.4) == slow.ratio(0.5)
    # A new worker of the group starts from the group's mean, not from the prior's 1.
    fresh = models.get(("pool p", "fresh"))
    assert fresh.n == 0
    assert (fresh.prefill_factor, fresh.decode_factor) == pytest.approx(models.mean("pool p"))
    models.forget_worker("slow")
    models.forget_worker("fresh")
    assert models.mean("pool p")[0] == pytest.approx(1.0, rel=0.1)


def test_a_state_saved_by_the_one_factor_version_restores_what_it_can_say() -> None:
    from raysched.core.load import LoadTable
    from raysched.core.types import ServicePrior
    from tests.builders import make_worker
    from tests.unit.test_adaptive import PRIOR

    cpu = ServicePrior(fixed_s=0.001)
    row = {"log_var": 0.01, "n": 40, "surprises": 0}
    old = {"forget": 0.99, "new_ratio": {},
           "priors": {"llm": {"fixed_s": PRIOR.fixed_s,
                              "prefill_s_per_token": PRIOR.prefill_s_per_token,
                              "decode_s_per_step": PRIOR.decode_s_per_step,
                              "batch_slowdown": PRIOR.batch_slowdown},
                      "cpu": {"fixed_s": cpu.fixed_s}},
           "models": [{"kind": "k", "worker": "llm", "log_factor": math.log(2.0), **row},
                      {"kind": "k", "worker": "cpu", "log_factor": math.log(3.0), **row}],
           "engine_models": [{"kind": "k", "worker": "llm", "log_factor": math.log(1.5), **row},
                             {"kind": "k", "worker": "cpu", "log_factor": math.log(3.0), **row}]}
    est = AdaptiveEstimator()
    est.restore(old)
    table = LoadTable()
    table.add(make_worker(worker_id="llm", pool="p", slots=4, concurrency=4, prior=PRIOR), 0.0)
    table.add(make_worker(worker_id="cpu", pool="c", prior=cpu), 0.0)
    llm, cpu_w = table.workers["llm"], table.workers["cpu"]
    # The contended factors come back. The old state does not say the engine worker's pool,
    # so its engine model starts again from the prior, in its live pool's group; a CPU
    # worker's, kept per kind, comes back.
    assert est.factor("k", llm) == pytest.approx(2.0)
    assert est.factor("k", cpu_w) == pytest.approx(3.0)
    m = est.engine_model("k", llm)
    assert (m.prefill_factor, m.decode_factor) == (1.0, 1.0) and m.n == 0
    assert ("pool p", "llm") in est.engine.models
    assert est.engine_model("k", cpu_w).decode_factor == pytest.approx(3.0)
    # A state saved now comes back as it was, its spread widened.
    rng = random.Random(5)
    learn(m, 1.2, 0.8, 50, rng)
    again = AdaptiveEstimator()
    again.restore(est.state())
    back = again.engine_model("k", llm)
    assert (back.prefill_factor, back.decode_factor) == pytest.approx(
        (m.prefill_factor, m.decode_factor))
    assert back.p00 > m.p00


def test_tasks_waiting_in_prefetch_slots_are_not_counted_as_in_the_batch() -> None:
    # A worker that runs one request at a time and holds three more in prefetch slots, its
    # completions exactly as the roofline prior says: the prompts waiting behind the running
    # one are not computed meanwhile, nor read by its decode steps, so the model stays at the
    # prior and so does admission's idle figure.
    from raysched.core.adaptive import _context_tokens
    from raysched.core.load import LoadTable
    from raysched.core.protocol import Completion
    from raysched.core.roofline import PRESETS
    from tests.builders import make_task, make_worker

    prior = PRESETS["7b"].prior()
    table = LoadTable()
    table.add(make_worker(worker_id="w", pool="p", slots=4, concurrency=1, prior=prior,
                          max_context_tokens=65_536), 0.0)
    w, est = table.workers["w"], AdaptiveEstimator()
    now_s, queued, i = 0.0, [], 0
    for _ in range(200):
        while len(w.in_flight) < 4:
            t = make_task(task_id=f"t{i}", kind="k", pool="p", num_prompt_tokens=16_000,
                          max_new_tokens=200, deadline_s=1e9)
            i += 1
            table.start(t.task_id, "w", est.service_s(t, w), now_s)
            est.started(t, w, now_s)
            queued.append(t)
        t = queued.pop(0)
        took_s = prior.service_s(16_000, 200, 1, _context_tokens(t, 200))
        now_s += took_s
        table.finish(t.task_id, now_s)
        est.observe(t, Completion(t.task_id, "w", True, took_s, num_generated_tokens=200), now_s)
    m = est.engine_model("k", w)
    assert m.prefill_factor == pytest.approx(1.0, rel=0.02)
    assert m.decode_factor == pytest.approx(1.0, rel=0.02)
    probe = make_task(kind="k", pool="p", num_prompt_tokens=16_000, max_new_tokens=200)
    short = est.short_new_tokens(probe)
    assert est.idle_service_s(probe, w.group) == pytest.approx(
        prior.service_s(16_000, short, 1, _context_tokens(probe, short)), rel=0.02)
