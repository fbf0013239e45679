"""The engine's cost model per worker, learned from completion telemetry.

An LLM engine's time for one request is two kinds of work: prompt tokens computed (prefill,
compute-bound: its own prompt and the other requests' prompts the engine computed while this
one was in its batch, since a prefill chunk holds up the decodes riding in its step) and decode
steps (memory-bound, one per output token, slower the bigger the batch). The worker's roofline
prior gives both in seconds; how this machine compares can differ between the two (an L4
against the A100 the prior assumes is 2.6 times slower at compute and 6.8 times at memory
bandwidth, from NVIDIA's datasheets: 121 against 312 dense BF16 TFLOPS, 300 against 2,039
GB/s), so the model learns one factor for each::

    service_s ~ prefill_factor * prefill_prior_s + decode_factor * decode_prior_s

``prefill_prior_s`` is the prior's seconds for every prompt token the request waited on (the
scheduler knows what it placed on the worker, ``adaptive.PrefillBacklog``); ``decode_prior_s``
is the prior's fixed cost plus its decode steps, each figured for the KV cache of the batch the
request joined (``ServicePrior.decode_step_s``; at the batch size it ran in where the prior has
no KV figure). Dividing by the prior's total makes each completion one observation of the mean
ratio ``share * prefill_factor + (1 - share) * decode_factor``, ``share`` being the prefill part
of the prior's figure, so a long request does not outweigh a short one (the errors are
relative). The two factors are estimated jointly by an extended Kalman filter on their logs,
observing the log of each completion's ratio (so both stay positive): they start at the prior's
(1, 1) or at the mean of like workers, with a standard deviation of ``PRIOR_LOG_SD`` each; old
completions are forgotten at ``forget`` per completion; a direction no completion has spoken of
(every request with the same share) stays at its prior. A worker that runs callables instead of
an engine has no tokens: its share is 0 and the second factor is its speed on that kind.

The model is contention-free by construction: the batch's KV cache and the others' prefill are
in the features, so identical workers converge to the same factors whatever their load, and a
slowed worker is slower on its own work and on the others' prefill alike, seen within tens of
completions (three surprising completions in a row start the filter again from the new speed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The prior's own uncertainty, as a standard deviation of the log of each factor: a worker is
# taken to be within about a factor 1.6 of its prior before it has been seen.
PRIOR_LOG_SD = 0.5
# The relative noise of one completion about the model that the filter's gain assumes (10%):
# against the prior's spread, about 25 completions outweigh the prior. The noise really seen is
# learned apart (``noise_log_var``) and scales the model's stated uncertainty; the gain does not
# follow it, since the large errors of a model still far from the truth would inflate it and
# slow the learning that would shrink them.
ASSUMED_NOISE_LOG_SD = 0.1
MIN_NOISE_LOG_SD = 0.01
# A completion off by more than this many noise standard deviations (plus a fixed 10%) is a
# surprise; three in a row mean the worker changed.
SURPRISE_SD = 3.0
SURPRISES_TO_RELEARN = 3


def is_surprise(n: int, log_error: float, log_sd: float) -> bool:
    """Whether a completion ``log_error`` off a model learned from ``n`` completions, whose
    single completions spread by ``log_sd``, is a surprise (see ``SURPRISE_SD``)."""
    return n >= 5 and abs(log_error) > SURPRISE_SD * log_sd + 0.1


@dataclass(slots=True)
class EngineModel:
    """Prefill and decode factors of one worker over its prior, kept as their logs (so both
    stay positive whatever the completions say), with the covariance of those logs (``p00``,
    ``p01``, ``p11``) and the noise of single completions about the model (``noise_log_var``,
    log units)."""

    log_prefill: float = 0.0
    log_decode: float = 0.0
    p00: float = PRIOR_LOG_SD ** 2
    p01: float = 0.0
    p11: float = PRIOR_LOG_SD ** 2
    noise_log_var: float = ASSUMED_NOISE_LOG_SD ** 2
    n: int = 0
    surprises: int = 0

    @classmethod
    def starting_at(cls, prefill_factor: float, decode_factor: float) -> EngineModel:
        """A model not yet seen, at the given factors and the prior's spread about them."""
        return cls(math.log(prefill_factor), math.log(decode_factor))

    @property
    def prefill_factor(self) -> float:
        return math.exp(self.log_prefill)

    @property
    def decode_factor(self) -> float:
        return math.exp(self.log_decode)

    def ratio(self, share: float) -> float:
        """Measured over prior time, for work whose prior figure is ``share`` prefill."""
        return share * math.exp(self.log_prefill) + (1.0 - share) * math.exp(self.log_decode)

    def _gradient(self, share: float) -> tuple[float, float, float]:
        """``ratio(share)`` and the derivatives of its log by each log factor (they sum to 1:
        the parts of the figure each factor carries)."""
        prefill = share * math.exp(self.log_prefill)
        decode = (1.0 - share) * math.exp(self.log_decode)
        total = prefill + decode
        return total, prefill / total, decode / total

    def sd(self, share: float) -> float:
        """Relative standard error of ``ratio(share)``: how well the mean is known, not how
        much single completions vary about it (the filter's spread at its assumed noise,
        scaled to the noise really seen once completions have come)."""
        _, h0, h1 = self._gradient(share)
        var = h0 * h0 * self.p00 + 2.0 * h0 * h1 * self.p01 + h1 * h1 * self.p11
        if self.n:
            var *= self.noise_log_var / ASSUMED_NOISE_LOG_SD ** 2
        return math.sqrt(max(var, 0.0))

    def noise_sd(self) -> float:
        """Relative standard deviation of single completions about the model."""
        return math.sqrt(self.noise_log_var)

    def update(self, share: float, ratio: float, forget: float) -> None:
        """Learn from one completion that took ``ratio`` (> 0) times the prior's figure,
        ``share`` of which was prefill (0 <= share <= 1): one step of an extended Kalman
        filter on the log factors, observing the log of the ratio."""
        predicted, h0, h1 = self._gradient(share)
        rel = math.log(max(ratio, 1e-9) / predicted)
        big = is_surprise(self.n, rel, self.noise_sd())
        self.surprises = self.surprises + 1 if big else 0
        if self.surprises >= SURPRISES_TO_RELEARN:
            # The worker changed: both factors move to this completion's speed and the filter
            # starts again from the prior's spread, so the next completions are learned at full
            # weight rather than blended into the old speed.
            self.log_prefill += rel
            self.log_decode += rel
            self.p00, self.p01, self.p11 = PRIOR_LOG_SD ** 2, 0.0, PRIOR_LOG_SD ** 2
            self.n, self.surprises = 0, 0
            self.noise_log_var = ASSUMED_NOISE_LOG_SD ** 2
            return
        if big:
            return  # an outlier is not learned until it repeats
        weight = max(1.0 - forget, 1.0 / (self.n + 1))
        if self.n:
            self.noise_log_var = max((1.0 - weight) * self.noise_log_var + weight * rel * rel,
                                     MIN_NOISE_LOG_SD ** 2)
        # Forgetting widens the spread, but never past the prior's: a direction no completion
        # speaks of stays where it started instead of drifting without bound.
        self.p00 = min(self.p00 / forget, PRIOR_LOG_SD ** 2)
        self.p11 = min(self.p11 / forget, PRIOR_LOG_SD ** 2)
        bound = math.sqrt(self.p00 * self.p11)
        self.p01 = max(-bound, min(bound, self.p01 / forget))
        ph0 = self.p00 * h0 + self.p01 * h1
        ph1 = self.p01 * h0 + self.p11 * h1
        s = h0 * ph0 + h1 * ph1 + ASSUMED_NOISE_LOG_SD ** 2
        k0, k1 = ph0 / s, ph1 / s
        self.log_prefill += k0 * rel
        self.log_decode += k1 * rel
        self.p00 -= k0 * ph0
        self.p01 -= k0 * ph1
        self.p11 -= k1 * ph1
        self.n += 1


class EngineModelSet:
    """Engine models per (group, worker id), and each group's sum of factors (kept up to date
    in O(1)): where a new worker starts and what like workers share. A group is the workers
    that ought to be alike: an engine pool, or the workers running one kind of callable."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], EngineModel] = {}
        self._sum: dict[str, list[float]] = {}
        self._count: dict[str, int] = {}

    def get(self, key: tuple[str, str]) -> EngineModel:
        """The model of ``key`` (group, worker id), started from its group's mean if new."""
        m = self.models.get(key)
        return m if m is not None else self.add(key)

    def mean(self, group: str) -> tuple[float, float]:
        """The group's mean factors, (prefill, decode); the prior's (1, 1) when it has none."""
        count = self._count.get(group, 0)
        if not count:
            return 1.0, 1.0
        total = self._sum[group]
        return total[0] / count, total[1] / count

    def add(self, key: tuple[str, str], m: EngineModel | None = None) -> EngineModel:
        self.remove(key)
        if m is None:
            m = EngineModel.starting_at(*self.mean(key[0]))
        self.models[key] = m
        total = self._sum.setdefault(key[0], [0.0, 0.0])
        total[0] += m.prefill_factor
        total[1] += m.decode_factor
        self._count[key[0]] = self._count.get(key[0], 0) + 1
        return m

    def remove(self, key: tuple[str, str]) -> None:
        m = self.models.pop(key, None)
        if m is not None:
            total = self._sum[key[0]]
            total[0] -= m.prefill_factor
            total[1] -= m.decode_factor
            self._count[key[0]] -= 1

    def learn(self, key: tuple[str, str], share: float, ratio: float,
              forget: float) -> EngineModel:
        """Learn that a completion on ``key`` took ``ratio`` times the prior's figure, of which
        ``share`` was prefill."""
        m = self.get(key)
        before = m.prefill_factor, m.decode_factor
        m.update(share, ratio, forget)
        total = self._sum[key[0]]
        total[0] += m.prefill_factor - before[0]
        total[1] += m.decode_factor - before[1]
        return m

    def shared(self, key: tuple[str, str], m: EngineModel, share: float,
               own_ratio: float) -> float:
        """``m``'s ratio at ``share``, or its group's mean ratio while ``m``'s is within
        ``own_ratio`` of the mean of the others': like workers share one figure, and learned
        models of like workers differ by noise that must not decide placement."""
        count = self._count.get(key[0], 0)
        mine = m.ratio(share)
        if count >= 2:
            total = self._sum[key[0]]
            others = ((share * (total[0] - m.prefill_factor)
                       + (1.0 - share) * (total[1] - m.decode_factor)) / (count - 1))
            if others / own_ratio < mine < others * own_ratio:
                return (share * total[0] + (1.0 - share) * total[1]) / count
        return mine

    def forget_worker(self, worker_id: str) -> None:
        for key in [k for k in self.models if k[1] == worker_id]:
            self.remove(key)
