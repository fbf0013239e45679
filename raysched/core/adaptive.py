"""Adaptive placement: learn how fast each worker really is from completion telemetry.

Workers of one pool are rarely equal (a 7B on an L4 next to one on an H100, a noisy neighbour,
thermal throttling), and the engine prior cannot know. The prior already models the engine:
prefill per prompt token, decode step per output token, the slowdown of a bigger batch. What it
cannot know is how this machine compares, so the model learned per (task kind, worker) is one
number on top of it, a speed factor::

    service_s ~ factor(kind, worker) * prior.service_s(prompt_tokens, new_tokens, batch)

Each completion gives the ratio of its measured service to the prior's figure for the batch it
really ran in and the tokens it really generated; the factor is an exponentially weighted mean
of the log of that ratio (a running mean for the first ``1 / (1 - forget)`` completions, then a
memory of about that many). Because the prior carries the batch and the tokens, the factor
does not absorb them; what it does absorb of the worker's own recent load (other requests'
prefills) is noise that like workers share, so like workers use their kind's mean factor and a
worker gets its own only when it is ``OWN_FACTOR_RATIO`` off. Three surprising completions in a
row (a worker slowed down) start the model again from the new speed, so the change is seen
within tens of completions. A (kind, worker) pair never seen starts from the kind's mean (a CPU
callable that takes 400 ms is not a 1 ms task on a new worker). The generated length is learned
per kind as a distribution of fractions of ``max_new_tokens`` and planned at its top (the
longest of the recent answers). Admission's best case is the prior times the kind's fast tenth
of factors; expiry plans with at least the prior.

Placement is filter -> score -> pick:
- filter: the pool's free workers that can hold the task;
- score: predicted finish = the worker's backlog wait + learned service;
- pick: the least loaded of the workers that finish about as early as the best (within
  ``1 - SAME_SPEED`` of a service), with two deadline-aware twists.
  * Exploration, driven by uncertainty and bounded: non-CRITICAL tasks score an uncertain worker
    up to ``explore`` standard deviations (at most ``max_bonus`` of its service time) faster,
    so little-known workers get tried. CRITICAL tasks never explore, and never go to a worker
    predicted to miss their deadline while another is predicted to meet it.
  * Keeping fast workers for urgent work: among unlike workers, a LOW task whose deadline is
    far off goes to the slowest that still finish it with half its slack to spare (the least
    loaded of them).
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from raysched.core.load import LoadTable, WorkerGroup, WorkerLoad
from raysched.core.placement import Choice, EstimatorPlacement, eligible
from raysched.core.protocol import Completion
from raysched.core.types import CoreTask, Priority, ServicePrior

# Workers whose predicted service is within this factor of each other count as equally fast:
# learned models of identical workers differ by noise, and noise must not decide placement.
SAME_SPEED = 0.9
# A worker gets a speed factor of its own once it is this much slower or faster than its kind's
# over all workers. Below that, the difference is what the worker's own recent load did to its
# batches (other requests' prefills, KV growth), which the prior leaves out and which the load
# balance already answers: on the conversation trace a band of 10% let that noise split like
# workers and cost HIGH p99; 1.4 keeps them together and still singles out a 1.5x worker.
OWN_FACTOR_RATIO = 1.4
# The prior's own uncertainty, as a standard deviation of the log speed factor: a worker is
# taken to be within about a factor 1.6 of its prior before it has been seen.
PRIOR_LOG_SD = 0.5
# A completion whose log ratio is off by more than this many standard deviations (plus a fixed
# 10% for noise) is a surprise; three in a row mean the worker changed.
SURPRISE_SD = 3.0
SURPRISES_TO_RELEARN = 3
# Output lengths are learned as a distribution and planned at its top: a deadline is at stake,
# and a mean lets placement and backlog plan for answers shorter than one in two will be (on
# the conversation trace, planning at the mean cost LOW work 4 points of deadlines met at full
# load, at the 90th percentile 1.4 points; on the bursty financial mix, the 99th cost HIGH 2
# points against the longest). Recomputed every NEW_TOKENS_EVERY completions over the last
# NEW_TOKENS_KEPT: what it saves is the gap between ``max_new_tokens`` and the longest answer.
NEW_TOKENS_QUANTILE = 1.0
# The best case a kind's telemetry shows: the 10th percentile of its last RATIOS_KEPT ratios of
# measured to prior service. Busy batches inflate most completions; the fast tenth ran nearly
# alone.
BEST_CASE_QUANTILE = 0.1
RATIOS_KEPT = 256
NEW_TOKENS_KEPT = 256
NEW_TOKENS_EVERY = 16


@dataclass
class SpeedModel:
    """The log speed factor of one (kind, worker) pair, with its spread."""

    log_factor: float = 0.0
    log_var: float = PRIOR_LOG_SD ** 2
    n: int = 0
    surprises: int = 0

    @property
    def factor(self) -> float:
        return math.exp(self.log_factor)

    def sd(self) -> float:
        """Standard deviation of the log factor's estimate: the prior's before any data."""
        if self.n == 0:
            return PRIOR_LOG_SD
        return math.sqrt(self.log_var / self.n)

    def update(self, ratio: float, forget: float) -> None:
        """Learn from one completion that took ``ratio`` times the prior's figure."""
        r = math.log(max(ratio, 1e-9))
        err = r - self.log_factor
        spread = math.sqrt(max(self.log_var, 0.0))
        big = self.n >= 5 and abs(err) > SURPRISE_SD * spread + 0.1
        self.surprises = self.surprises + 1 if big else 0
        weight = max(1.0 - forget, 1.0 / (self.n + 1))
        if self.surprises >= SURPRISES_TO_RELEARN:
            # The worker changed: start again from this completion, as from a first one, so
            # the next few are averaged at full weight rather than blended into the old speed.
            self.n, self.surprises = 0, 0
        elif big:
            return  # an outlier is not learned until it repeats
        if self.n == 0:
            self.log_factor, self.log_var = r, PRIOR_LOG_SD ** 2
        else:
            self.log_factor += weight * err
            self.log_var = (1.0 - weight) * (self.log_var + weight * err * err)
        self.n += 1


class RecentQuantile:
    """A quantile of the last ``kept`` values, recomputed every ``NEW_TOKENS_EVERY`` values
    (every value while fewer have come), so a completion does not pay a sort."""

    def __init__(self, quantile: float, kept: int) -> None:
        self.quantile = quantile
        self._values: deque[float] = deque(maxlen=kept)
        self._count = 0
        self.value = 1.0

    def add(self, x: float) -> float:
        """Take ``x``; returns the quantile now."""
        self._values.append(x)
        self._count += 1
        if self._count < NEW_TOKENS_EVERY or self._count % NEW_TOKENS_EVERY == 0:
            ordered = sorted(self._values)
            self.value = ordered[int(self.quantile * (len(ordered) - 1))]
        return self.value


@dataclass
class AdaptiveEstimator:
    """Learned speed factor per (kind, worker) over each worker's engine prior."""

    forget: float = 0.99
    models: dict[tuple[str, str], SpeedModel] = field(default_factory=dict)
    priors: dict[str, ServicePrior] = field(default_factory=dict)
    # Generated tokens as a fraction of max_new_tokens, per kind: the NEW_TOKENS_QUANTILE of
    # the last NEW_TOKENS_KEPT completions.
    new_ratio: dict[str, float] = field(default_factory=dict)
    _new_ratios: dict[str, RecentQuantile] = field(default_factory=dict)
    # Per kind, the BEST_CASE_QUANTILE of the last RATIOS_KEPT measured / prior ratios.
    _best_factor: dict[str, RecentQuantile] = field(default_factory=dict)
    # Per kind, the sum and count of its models' log factors: the kind's mean over its workers,
    # where a new (kind, worker) starts and what like workers share (kept up to date in O(1)).
    _kind_sum: dict[str, float] = field(default_factory=dict)
    _kind_count: dict[str, int] = field(default_factory=dict)

    def model(self, kind: str, worker: WorkerLoad) -> SpeedModel:
        key = (kind, worker.worker_id)
        m = self.models.get(key)
        if m is None:
            self.priors[worker.worker_id] = worker.spec.prior
            m = self._new_model(key)
        return m

    def _new_model(self, key: tuple[str, str], m: SpeedModel | None = None) -> SpeedModel:
        kind = key[0]
        if m is None:
            count = self._kind_count.get(kind, 0)
            m = SpeedModel(self._kind_sum.get(kind, 0.0) / count if count else 0.0)
        self.models[key] = m
        self._kind_sum[kind] = self._kind_sum.get(kind, 0.0) + m.log_factor
        self._kind_count[kind] = self._kind_count.get(kind, 0) + 1
        return m

    def _others_log_factor(self, kind: str, m: SpeedModel) -> float | None:
        """The mean log factor of the kind's other workers (None when there are none)."""
        count = self._kind_count.get(kind, 0)
        if count < 2:
            return None
        return (self._kind_sum[kind] - m.log_factor) / (count - 1)

    def expected_new_tokens(self, task: CoreTask) -> float:
        return task.max_new_tokens * self.new_ratio.get(task.kind, 1.0)

    def _prior_s(self, task: CoreTask, prior: ServicePrior, batch: int) -> float:
        return prior.service_s(task.num_prompt_tokens, round(self.expected_new_tokens(task)),
                               batch)

    def factor(self, kind: str, worker: WorkerLoad) -> float:
        """The speed factor placement uses: the kind's, over all its workers, unless this
        worker's own differs from it by more than ``OWN_FACTOR_RATIO``. Like workers then
        share one factor and are told apart by their load alone, as the prior tells them; a
        slower or faster one gets its own."""
        m = self.model(kind, worker)
        others = self._others_log_factor(kind, m)
        if others is not None and abs(m.log_factor - others) < math.log(OWN_FACTOR_RATIO):
            count = self._kind_count[kind]
            return math.exp(self._kind_sum[kind] / count)
        return m.factor

    def service_s(self, task: CoreTask, worker: WorkerLoad) -> float:
        batch = min(len(worker.in_flight) + 1, worker.spec.concurrency)
        factor = self.factor(task.kind, worker)
        return max(factor * self._prior_s(task, worker.spec.prior, batch), 1e-6)

    def service_sd_s(self, task: CoreTask, worker: WorkerLoad) -> float:
        return self.service_s(task, worker) * (math.exp(self.model(task.kind, worker).sd()) - 1)

    def idle_service_s(self, task: CoreTask, group: WorkerGroup) -> float:
        """The best case on an idle worker of ``group``: the engine prior at the learned answer
        length, times the kind's ``BEST_CASE_QUANTILE`` speed factor (1 before any telemetry).

        Completions are measured inside busy batches, so the mean factor carries contention an
        idle worker does not have (admitting on it would refuse tasks an idle worker meets);
        the fast end of the kind's recent completions is what an idle worker does. It matters
        most where the prior knows little: a CPU callable's prior is the dispatch cost, 1 ms,
        and a 100 ms callable must not be started 1 ms before its deadline."""
        quantile = self._best_factor.get(task.kind)
        best = quantile.value if quantile is not None else 1.0
        return max(best * min(self._prior_s(task, w.spec.prior, 1)
                              for w in group.members.values()), 1e-6)

    def planned_idle_s(self, task: CoreTask, group: WorkerGroup) -> float:
        """What expiry plans with: the prior, unless the kind's best case is slower still (the
        prior does not know the work: a CPU callable). Never below the prior, so a fast tenth
        of completions does not let tasks start later than they can finish."""
        return max(self.idle_service_s(task, group),
                   min(self._prior_s(task, w.spec.prior, 1) for w in group.members.values()))

    def observe(self, task: CoreTask, completion: Completion, now_s: float) -> None:
        prior = self.priors.get(completion.worker_id)
        if prior is None:
            return  # a worker never scored (already gone)
        new = completion.num_generated_tokens if task.max_new_tokens else 0
        expected_s = prior.service_s(task.num_prompt_tokens, new, completion.batch_size)
        if expected_s <= 0 or completion.service_s <= 0:
            return
        key = (task.kind, completion.worker_id)
        m = self.models.get(key) or self._new_model(key)
        before = m.log_factor
        ratio = completion.service_s / expected_s
        m.update(ratio, self.forget)
        self._kind_sum[task.kind] += m.log_factor - before
        self._best_factor.setdefault(
            task.kind, RecentQuantile(BEST_CASE_QUANTILE, RATIOS_KEPT)).add(ratio)
        if task.max_new_tokens:
            lengths = self._new_ratios.setdefault(
                task.kind, RecentQuantile(NEW_TOKENS_QUANTILE, NEW_TOKENS_KEPT))
            self.new_ratio[task.kind] = lengths.add(min(1.0, new / task.max_new_tokens))

    def forget_worker(self, worker_id: str) -> None:
        for key in [k for k in self.models if k[1] == worker_id]:
            m = self.models.pop(key)
            self._kind_sum[key[0]] -= m.log_factor
            self._kind_count[key[0]] -= 1
        self.priors.pop(worker_id, None)

    def table(self) -> list[dict[str, Any]]:
        """Per (worker, kind): the learned time of a typical task (500 prompt tokens, 100 new
        at the learned length ratio, alone), the prior's, observations, uncertainty."""
        rows = []
        for (kind, wid), m in sorted(self.models.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            prior = self.priors[wid]
            typical_new = (round(100 * self.new_ratio.get(kind, 1.0))
                           if prior.decode_s_per_step else 0)
            prior_s = prior.service_s(500 if prior.prefill_s_per_token else 0, typical_new, 1)
            rows.append({"worker": wid, "kind": kind, "predicted_ms": 1e3 * m.factor * prior_s,
                         "prior_ms": 1e3 * prior_s, "speed_factor": m.factor,
                         "observations": m.n,
                         "uncertainty_ms": 1e3 * m.factor * prior_s * (math.exp(m.sd()) - 1)})
        return rows

    def state(self) -> dict[str, Any]:
        return {"forget": self.forget, "new_ratio": dict(self.new_ratio),
                "priors": {w: asdict(p) for w, p in self.priors.items()},
                "models": [{"kind": k, "worker": w, **asdict(m)}
                           for (k, w), m in self.models.items()]}

    def restore(self, state: dict[str, Any], trust: float = 0.25) -> None:
        """Load a saved state. Restored models are trusted less (their spread is widened by
        ``1 / trust``): a restarted worker may not be the machine it was."""
        self.new_ratio.update(state.get("new_ratio", {}))
        self.priors.update({w: ServicePrior(**p) for w, p in state.get("priors", {}).items()})
        for row in state.get("models", []):
            if row["worker"] not in self.priors or "log_factor" not in row:
                continue  # a worker not known here, or a model of another kind
            key = (row["kind"], row["worker"])
            old = self.models.pop(key, None)
            if old is not None:
                self._kind_sum[key[0]] -= old.log_factor
                self._kind_count[key[0]] -= 1
            self._new_model(key, SpeedModel(float(row["log_factor"]),
                                            float(row["log_var"]) / trust, int(row["n"])))


class AdaptivePlacement(EstimatorPlacement):
    """Filter -> score (learned) -> pick, deadline-aware, with bounded exploration."""

    def __init__(self, estimator: AdaptiveEstimator | None = None, explore: float = 1.0,
                 max_bonus: float = 0.2, exact_up_to: int = 64, samples: int = 8,
                 seed: int = 0) -> None:
        self.estimator: AdaptiveEstimator = estimator or AdaptiveEstimator()
        self.explore = explore
        self.max_bonus = max_bonus
        self.exact_up_to = exact_up_to
        self.samples = samples
        self._rng = random.Random(seed)

    def _candidates(self, task: CoreTask, table: LoadTable) -> list[WorkerLoad]:
        workers = table.ordered(task.pool)
        groups = [g for g in table.groups(task.pool) if eligible(task, g)]
        ok = {id(w) for g in groups for w in g.members.values()}
        if len(workers) <= self.exact_up_to:
            return [w for w in workers if w.free_slots > 0 and id(w) in ok]
        # Large pools: each group's least-loaded worker plus a few random ones, scored exactly.
        found = {w.worker_id: w for g in groups if (w := g.best_free()) is not None}
        for i in self._rng.sample(range(len(workers)), min(self.samples, len(workers))):
            w = workers[i]
            if w.free_slots > 0 and id(w) in ok:
                found[w.worker_id] = w
        return list(found.values())

    def state(self) -> dict[str, Any] | None:
        return self.estimator.state()

    def restore(self, state: dict[str, Any]) -> int:
        self.estimator.restore(state)
        return len(state.get("models", []))

    def learned(self) -> list[dict[str, Any]]:
        return self.estimator.table()

    def place(self, task: CoreTask, table: LoadTable, now_s: float) -> Choice | None:
        est = self.estimator
        scored = []
        for w in self._candidates(task, table):
            service = est.service_s(task, w)
            scored.append((now_s + w.wait_s() + service, service, w))
        if not scored:
            return None
        if task.priority is Priority.CRITICAL:
            meets = [s for s in scored if s[0] <= task.deadline_s]
            return _least_loaded_of_the_fastest(meets or scored)
        if task.priority is Priority.LOW and math.isfinite(task.deadline_s):
            spare = [s for s in scored if s[0] <= task.deadline_s - 0.5 * (task.deadline_s - now_s)]
            slowest_s = max((s[1] for s in spare), default=0.0)
            if len(spare) > 1 and min(s[1] for s in spare) < slowest_s * SAME_SPEED:
                # Unlike workers: the slowest that still make it with room to spare, and among
                # those about as slow (within SAME_SPEED) the least loaded, so LOW work
                # spreads over them instead of queueing on one.
                alike = [s for s in spare if s[1] >= slowest_s * SAME_SPEED]
                return _least_loaded_of_the_fastest(alike)

        def optimistic(s: tuple[float, float, WorkerLoad]) -> tuple[float, str]:
            bonus = min(self.explore * est.service_sd_s(task, s[2]), self.max_bonus * s[1])
            return (s[0] - bonus, s[2].worker_id)

        best = min(scored, key=optimistic)
        choice = _least_loaded_of_the_fastest(scored)
        if best[0] > choice.finish_s + (1.0 - SAME_SPEED) * choice.service_s:
            return Choice(best[2], best[1], best[0])  # exploring a little-known worker
        return choice


def _least_loaded_of_the_fastest(scored: list[tuple[float, float, WorkerLoad]]) -> Choice:
    """The least loaded of the workers whose predicted finish is about the earliest.

    Finishes within ``1 - SAME_SPEED`` of a service of the earliest count as equal: the learned
    models of like workers differ by noise, and the cost of piling onto one batch (other
    requests' prefills, a growing KV cache) is larger than the prior's batch slowdown says, so
    like workers share the work as a load balancer would, and a slow one is left out.
    """
    finish_s, service_s, _ = min(scored, key=lambda s: (s[0], s[2].worker_id))
    near = [s for s in scored if s[0] <= finish_s + (1.0 - SAME_SPEED) * service_s]
    f, svc, w = min(near, key=lambda s: (len(s[2].in_flight) / s[2].spec.concurrency,
                                         s[2].backlog_s / s[2].spec.concurrency,
                                         s[2].worker_id))
    return Choice(w, svc, f)

