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


def test_a_state_saved_with_one_speed_factor_per_kind_restores_as_both_factors() -> None:
    from raysched.core.load import LoadTable
    from tests.builders import make_worker
    from tests.unit.test_adaptive import PRIOR

    old = {"forget": 0.99, "new_ratio": {},
           "priors": {"w": {"fixed_s": PRIOR.fixed_s,
                            "prefill_s_per_token": PRIOR.prefill_s_per_token,
                            "decode_s_per_step": PRIOR.decode_s_per_step,
                            "batch_slowdown": PRIOR.batch_slowdown}},
           "models": [{"kind": "k", "worker": "w", "log_factor": math.log(2.0),
                       "log_var": 0.01, "n": 40, "surprises": 0}],
           "engine_models": [{"kind": "k", "worker": "w", "log_factor": math.log(1.5),
                              "log_var": 0.01, "n": 40, "surprises": 0}]}
    est = AdaptiveEstimator()
    est.restore(old)
    table = LoadTable()
    table.add(make_worker(worker_id="w", pool="p", slots=4, concurrency=4, prior=PRIOR), 0.0)
    w = table.workers["w"]
    assert est.factor("k", w) == pytest.approx(2.0)
    assert est.engine_model("k", w).prefill_factor == pytest.approx(1.5)
    assert est.engine_model("k", w).decode_factor == pytest.approx(1.5)
    # And the state saved now comes back as it was, its spread widened.
    again = AdaptiveEstimator()
    again.restore(est.state())
    m = again.engine_model("k", w)
    assert (m.prefill_factor, m.decode_factor) == pytest.approx((1.5, 1.5))
    assert m.p00 > est.engine_model("k", w).p00
