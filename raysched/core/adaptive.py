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
longest of the recent answers).

The factor above predicts completions inside the batches workers really run, so it carries the
contention of those batches: with chunked prefill, every step that computes another request's
prompt chunk holds up the decodes riding in it, and on a busy pool of long prompts that makes
measured service two or three times the idle figure. That is right for placement and wrong for
admission, which must refuse only what an idle worker cannot do. So a second model, the
engine's cost model (``raysched.core.engine_model``), learns from the same completions with the
contention in its features: each worker keeps a backlog of the prior's prefill seconds placed
on it and not yet computed (drained at the worker's learned prefill speed), and a completion's
prefill is its own prompt plus the others' prefill the backlog says the worker computed while
the task was in its batch (what was ahead of it when it started, plus what joined after and was
done before it finished); its decode is the prior's steps for the KV cache of the batch it
joined. Tasks in prefetch slots beyond the batch join it when a task leaves. The model
learns a prefill factor and a decode factor per engine worker (shared by every kind: the cost
is in tokens), per (kind, worker) for a worker running callables. On identical workers it
stays at the prior's whatever the load; a worker that really is slower is slower on its own
work and on the others' prefill alike, so its model still shows it, within the same tens of
completions. Admission's best case is ``task`` alone with a short answer (the 5th percentile
of the kind's recent lengths) on the engine model of the fastest eligible worker; expiry plans
at the planned answer length and never faster than the prior (see ``planned_idle_s``).

Placement is filter -> score -> pick:
- filter: the pool's free workers that can hold the task;
- score: predicted finish = the worker's backlog wait + the prefill ahead of the task there (its
  prefill backlog at its learned prefill speed) + learned service, its decode steps figured for
  the KV cache of the batch it joins (``kv_tokens``: a batch of long contexts reads more bytes
  per step than one of short ones of the same size);
- misses: when every eligible worker has been scored and even a confident lower bound of the
  finish (``AdaptiveEstimator.earliest_finish_s``: the prefill ahead, then the task's idle
  service with a short answer; or its service in the batch it joins at the low end of the
  contended factor's spread) is past the deadline on each, the choice says so and a
  core that enforces deadlines expires the task rather than spend a batch slot and the others'
  time on it: waiting cannot help, as the backlog drains no faster than time passes;
- likely late: when the central estimate (``likely_finish_s``: the median answer length) has
  every free worker finish past the deadline, the choice says so, and the core gives the free
  slots to queued work likely to make its deadline first;
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

# The prior's spread and what counts as a surprise are the engine model's: a speed factor is
# the same kind of figure, learned from the same completions.
from raysched.core.engine_model import (
    PRIOR_LOG_SD,
    SURPRISES_TO_RELEARN,
    EngineModel,
    EngineModelSet,
    is_surprise,
)
from raysched.core.load import LoadTable, WorkerGroup, WorkerLoad
from raysched.core.placement import Choice, EstimatorPlacement, eligible
from raysched.core.protocol import Completion
from raysched.core.types import CoreTask, Priority, ServicePrior

# Workers whose predicted service is within this factor of each other count as equally fast:
# learned models of identical workers differ by noise, and noise must not decide placement.
# On the financial mix (8 workloads, Poisson to CV 8, seeds 0-2) 0.8 rather than 0.9 took
# HIGH p99 from 1,395 to 1,307 ms at load 1.1 (edf 1,387), 1,201 to 1,162 at CV 2 (edf
# 1,177) and 1,497 to 1,479 at CV 4 (edf 1,444); on seeds 3-14 it left six of the eight
# within 1% and took load 1.1 from 1,503 to 1,465 ms (edf 1,433). It costs bursty overload
# some HIGH deadlines: at load 0.9 CV 4, 96.08% -> 94.90% met (edf 94.68%), seeds 3-14 97.71%
# -> 97.20% (edf 96.99%). 0.75 and 0.7 did no better; a band cut to the deadline changed
# nothing, and one narrowed where slack is short did worse.
SAME_SPEED = 0.8
# A worker gets a speed factor of its own once it is this much slower or faster than its kind's
# over all workers. Below that, the difference is what the worker's own recent load did to its
# batches (other requests' prefills, KV growth), which the prior leaves out and which the load
# balance already answers: on the conversation trace a band of 10% let that noise split like
# workers and cost HIGH p99; 1.4 keeps them together and still singles out a 1.5x worker.
OWN_FACTOR_RATIO = 1.4
# Output lengths are learned as a distribution and planned at its top: a deadline is at stake,
# and a mean lets placement and backlog plan for answers shorter than one in two will be (on
# the conversation trace, planning at the mean cost LOW work 4 points of deadlines met at full
# load, at the 90th percentile 1.4 points; on the bursty financial mix, the 99th cost HIGH 2
# points against the longest). Recomputed every NEW_TOKENS_EVERY completions over the last
# NEW_TOKENS_KEPT: what it saves is the gap between ``max_new_tokens`` and the longest answer.
NEW_TOKENS_QUANTILE = 1.0
# Admission and the "misses wherever it runs" test ask the opposite question, whether the task
# can make it at all, so they take a short answer: this quantile of the same recent fractions.
BEST_NEW_TOKENS_QUANTILE = 0.05
NEW_TOKENS_KEPT = 256
NEW_TOKENS_EVERY = 16
# A refusal on learned figures is probed (``SchedulerCore.submit``) while an eligible worker's
# engine model rests on fewer completions than this: the filter's gain says about 25 outweigh
# the prior (``engine_model.ASSUMED_NOISE_LOG_SD``).
PROBE_EVIDENCE = 25
# An engine model's log factors this far from where they were when last counted count as a move
# of the figures admission and expiry plan with (``figures_version``): 5%.
FIGURES_LOG_STEP = math.log(1.05)


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
        big = is_surprise(self.n, err, math.sqrt(max(self.log_var, 0.0)))
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
    """A quantile of the last ``kept`` values (``value``), optionally a second, lower one
    (``low``), and their median (``mid``), recomputed every ``NEW_TOKENS_EVERY`` values
    (every value while fewer have come), so a completion does not pay a sort."""

    def __init__(self, quantile: float, kept: int, low_quantile: float | None = None) -> None:
        self.quantile = quantile
        self.low_quantile = quantile if low_quantile is None else low_quantile
        self._values: deque[float] = deque(maxlen=kept)
        self._count = 0
        self.value = 1.0
        self.low = 1.0
        self.mid = 1.0

    def add(self, x: float) -> float:
        """Take ``x``; returns the quantile now."""
        self._values.append(x)
        self._count += 1
        if self._count < NEW_TOKENS_EVERY or self._count % NEW_TOKENS_EVERY == 0:
            ordered = sorted(self._values)
            self.value = ordered[int(self.quantile * (len(ordered) - 1))]
            self.low = ordered[int(self.low_quantile * (len(ordered) - 1))]
            self.mid = ordered[(len(ordered) - 1) // 2]
        return self.value


class ModelSet:
    """Speed models per (kind, worker id), and each kind's mean log factor over its workers
    (kept up to date in O(1)): where a new (kind, worker) starts and what like workers share;
    and the same mean over the workers that have completed work of the kind, below which a
    callable worker that has not is never figured (``shared_factor``)."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], SpeedModel] = {}
        self._kind_sum: dict[str, float] = {}
        self._kind_count: dict[str, int] = {}
        self._seen_sum: dict[str, float] = {}
        self._seen_count: dict[str, int] = {}

    def _count_seen(self, kind: str, m: SpeedModel, sign: int) -> None:
        if m.n:
            self._seen_sum[kind] = self._seen_sum.get(kind, 0.0) + sign * m.log_factor
            self._seen_count[kind] = self._seen_count.get(kind, 0) + sign

    def get(self, key: tuple[str, str]) -> SpeedModel:
        """The model of ``key`` (kind, worker id), started from its kind's mean if new."""
        m = self.models.get(key)
        return m if m is not None else self.add(key)

    def add(self, key: tuple[str, str], m: SpeedModel | None = None) -> SpeedModel:
        kind = key[0]
        old = self.models.pop(key, None)
        if old is not None:
            self._kind_sum[kind] -= old.log_factor
            self._kind_count[kind] -= 1
            self._count_seen(kind, old, -1)
        if m is None:
            m = SpeedModel(self.kind_log_factor(kind))
        self.models[key] = m
        self._count_seen(kind, m, 1)
        self._kind_sum[kind] = self._kind_sum.get(kind, 0.0) + m.log_factor
        self._kind_count[kind] = self._kind_count.get(kind, 0) + 1
        return m

    def learn(self, key: tuple[str, str], ratio: float, forget: float) -> SpeedModel:
        """Learn that a completion of ``key`` took ``ratio`` times the expected figure."""
        m = self.get(key)
        self._count_seen(key[0], m, -1)
        before = m.log_factor
        m.update(ratio, forget)
        self._kind_sum[key[0]] += m.log_factor - before
        self._count_seen(key[0], m, 1)
        return m

    def kind_log_factor(self, kind: str) -> float:
        """The mean log factor of ``kind`` over its workers (0, the prior, when none)."""
        count = self._kind_count.get(kind, 0)
        return self._kind_sum[kind] / count if count else 0.0

    def shared_factor(self, kind: str, m: SpeedModel, callable_kind: bool = False) -> float:
        """``m``'s factor, or the kind's mean over all its workers while ``m`` is within
        ``OWN_FACTOR_RATIO`` of the mean of the others: like workers share one figure.

        For a kind of callables (``callable_kind``), whose prior is a placeholder that knows
        nothing of the function, a model that has learned nothing yet is never figured slower
        than the mean over the workers that have: the figure it was made with goes stale as
        they learn, and a worker it makes look slower than they are would get no work to learn
        from (two long calls sent to one worker, one behind the other, while another stood idle
        at its prior). An engine's prior models its tokens, and stays the start there: taking
        the peers' figures instead raised HIGH p99 on the financial mix at inter-arrival CV 4
        from 1,479 to 1,510 ms (seeds 0-2)."""
        seen = self._seen_count.get(kind, 0)
        if callable_kind and not m.n and seen:
            return math.exp(min(m.log_factor, self._seen_sum[kind] / seen))
        count = self._kind_count.get(kind, 0)
        if count >= 2:
            others = (self._kind_sum[kind] - m.log_factor) / (count - 1)
            if abs(m.log_factor - others) < math.log(OWN_FACTOR_RATIO):
                return math.exp(self._kind_sum[kind] / count)
        return m.factor

    def forget_worker(self, worker_id: str) -> None:
        for key in [k for k in self.models if k[1] == worker_id]:
            m = self.models.pop(key)
            self._kind_sum[key[0]] -= m.log_factor
            self._kind_count[key[0]] -= 1
            self._count_seen(key[0], m, -1)


class PrefillBacklog:
    """The prior's prefill seconds placed on one worker and not yet computed, as a leaky
    bucket drained at the worker's speed (``drain_factor`` seconds of the worker per prior
    second), and the total ever placed. The prompts a continuous-batching engine has still to
    compute are what holds up every sequence in its batch; the scheduler knows what it placed,
    so it can tell that contention from the worker's own speed."""

    __slots__ = ("at_s", "drain_factor", "pending_s", "placed_s")

    def __init__(self) -> None:
        self.pending_s = 0.0
        self.placed_s = 0.0
        self.at_s = 0.0
        self.drain_factor = 1.0

    def advance(self, now_s: float) -> float:
        """Drain up to ``now_s``; returns the prefill seconds (of the prior) still pending."""
        if now_s > self.at_s:
            self.pending_s = max(0.0, self.pending_s - (now_s - self.at_s) / self.drain_factor)
            self.at_s = now_s
        return self.pending_s

    def place(self, prefill_s: float, now_s: float) -> float:
        """Add a prompt of ``prefill_s`` prior seconds; returns what was pending before it."""
        ahead_s = self.advance(now_s)
        self.pending_s += prefill_s
        self.placed_s += prefill_s
        return ahead_s


# A task is expired before it starts when even this many standard deviations faster than its
# engine model says, every eligible worker would finish it past its deadline.
MISS_CONFIDENCE_SD = 2.0
# ...or when, in the batch it would join, its service at the contended factor less this many
# standard deviations of single completions about that factor would. Chosen by the share of
# expired tasks that a replay with nothing refused completes in time (the false-rejection rate,
# target under 1%): on the bursty long-prompt workload at 1x and 4x, 0 gave 10% and 3%, 0.5
# gave 3.3% and 3.2%, 1 gives 0.2% and 0.4%; at 2 the bound never decides.
MISS_CONTENDED_SD = 1.0


@dataclass
class AdaptiveEstimator:
    """What is learned over each worker's engine prior: a speed factor per (kind, worker) that
    predicts completions in the batches the worker runs (placement), and the engine's cost
    model per worker, with the contention of those batches taken out (admission, expiry)."""

    forget: float = 0.99
    priors: dict[str, ServicePrior] = field(default_factory=dict)
    # Generated tokens as a fraction of max_new_tokens, per kind: the NEW_TOKENS_QUANTILE of
    # the last NEW_TOKENS_KEPT completions.
    new_ratio: dict[str, float] = field(default_factory=dict)
    _new_ratios: dict[str, RecentQuantile] = field(default_factory=dict)
    # Measured service over the prior's figure for the batch it ran in (contention included).
    contended: ModelSet = field(default_factory=ModelSet)
    # The engine's cost model: prefill and decode factors per worker, with the others'
    # prefill computed meanwhile taken out (``engine_model``).
    engine: EngineModelSet = field(default_factory=EngineModelSet)
    _pools: dict[str, str] = field(default_factory=dict)
    _engine_keys: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    _engines: dict[tuple[str, str], tuple[tuple[str, str], EngineModel]] = field(
        default_factory=dict)
    _backlog: dict[str, PrefillBacklog] = field(default_factory=dict)
    _started: dict[str, dict[str, _Started]] = field(default_factory=dict)
    # Per worker: tasks placed there beyond its batch, waiting in prefetch slots (task id ->
    # own prefill prior seconds, context tokens, least service seconds), in the order they
    # were placed.
    _waiting: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    # Per worker: the KV cache the sequences in its batch hold over their lives, in tokens
    # (each its prompt and half its planned answer), and how many it runs at once.
    _kv: dict[str, float] = field(default_factory=dict)
    _concurrency: dict[str, int] = field(default_factory=dict)
    # What ``figures_version`` counts: per kind, changes of its answer-length quantiles; over
    # all workers, moves of an engine model by more than FIGURES_LOG_STEP since the last one
    # counted (its log factors then, per engine key).
    _answers_version: dict[str, int] = field(default_factory=dict)
    _engines_version: int = 0
    _engines_counted: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)

    @property
    def models(self) -> dict[tuple[str, str], SpeedModel]:
        """The contended models, per (kind, worker id)."""
        return self.contended.models

    def model(self, kind: str, worker: WorkerLoad) -> SpeedModel:
        """The contended model of (``kind``, ``worker``), made when it is new; the worker's
        prior and pool are noted when first seen (a restored state's may predate the fields
        the prior has now, and a state saved before pools were kept has none)."""
        wid = worker.worker_id
        m = self.contended.models.get((kind, wid))
        if m is None:
            m = self.contended.add((kind, wid))
        if wid not in self._pools:
            self.priors[wid] = worker.spec.prior
            self._pools[wid] = worker.spec.pool
        return m

    def _engine_key(self, kind: str, worker_id: str) -> tuple[str, str]:
        """Where a worker's engine model is kept: per worker, shared by every kind, when it
        runs an engine (its cost is in tokens, whatever the request); per (kind, worker) when
        it runs callables, whose times are the kind's own."""
        key = self._engine_keys.get((kind, worker_id))
        if key is None:
            prior = self.priors[worker_id]
            engine = prior.prefill_s_per_token or prior.decode_s_per_step
            group = "pool " + self._pools.get(worker_id, "") if engine else "kind " + kind
            key = self._engine_keys[(kind, worker_id)] = (group, worker_id)
        return key

    def engine_model(self, kind: str, worker: WorkerLoad) -> EngineModel:
        """The contention-free cost model of ``worker`` (for ``kind``, where it runs
        callables)."""
        return self._engine(kind, worker)[1]

    def _engine(self, kind: str, worker: WorkerLoad) -> tuple[tuple[str, str], EngineModel]:
        """The key and the engine model of (``kind``, ``worker``), cached: admission and expiry
        ask for them once per worker of the group for every task."""
        found = self._engines.get((kind, worker.worker_id))
        if found is None:
            self.model(kind, worker)
            key = self._engine_key(kind, worker.worker_id)
            found = self._engines[(kind, worker.worker_id)] = (key, self.engine.get(key))
        return found

    def expected_new_tokens(self, task: CoreTask) -> float:
        return task.max_new_tokens * self.new_ratio.get(task.kind, 1.0)

    def _prior_s(self, task: CoreTask, prior: ServicePrior, batch: int,
                 kv_tokens: float = 0.0, new: int | None = None) -> float:
        """The prior's figure for ``task`` answering ``new`` tokens (None: its planned answer
        length), in a batch of ``batch`` whose other sequences hold ``kv_tokens`` of KV cache."""
        if new is None:
            new = round(self.expected_new_tokens(task))
        return prior.service_s(task.num_prompt_tokens, new, batch,
                               kv_tokens + _context_tokens(task, new))

    def short_new_tokens(self, task: CoreTask) -> int:
        """A short answer for ``task``: the ``BEST_NEW_TOKENS_QUANTILE`` of its kind's recent
        answer lengths, as a fraction of ``max_new_tokens`` (all of it before any telemetry)."""
        lengths = self._new_ratios.get(task.kind)
        ratio = lengths.low if lengths is not None else self.new_ratio.get(task.kind, 1.0)
        return round(task.max_new_tokens * ratio)

    def likely_finish_s(self, task: CoreTask, worker: WorkerLoad, now_s: float) -> float:
        """The central estimate of when ``task`` finishes if placed on ``worker`` now, in
        seconds on the core's clock: the wait for a slot, the prefill ahead of it, then its
        service in the batch it joins at the contended factor, answering the median of its
        kind's recent lengths (not the planned top, which placement and expiry keep to be
        safe, nor the short answer of the confident bounds)."""
        lengths = self._new_ratios.get(task.kind)
        ratio = lengths.mid if lengths is not None else self.new_ratio.get(task.kind, 1.0)
        batch = min(len(worker.in_flight) + 1, worker.spec.concurrency)
        service_s = self.factor(task.kind, worker) * self._prior_s(
            task, worker.spec.prior, batch, self.kv_tokens(worker),
            round(task.max_new_tokens * ratio))
        ahead_s = self.prefill_factor(task.kind, worker) * self.ahead_s(worker, now_s)
        return now_s + worker.wait_s() + ahead_s + service_s

    def idle_ratio(self, kind: str, worker: WorkerLoad, share: float) -> float:
        """Learned idle time over the prior's for work ``share`` of whose prior figure is
        prefill, on ``worker``: its engine model's, shared by like workers as ``factor`` is."""
        key, m = self._engine(kind, worker)
        return self.engine.shared(key, m, share, OWN_FACTOR_RATIO)

    def prefill_factor(self, kind: str, worker: WorkerLoad) -> float:
        """The learned time of prefill on ``worker`` over the prior's."""
        return self.idle_ratio(kind, worker, 1.0)

    def engine_s(self, kind: str, worker: WorkerLoad, prefill_s: float,
                 rest_s: float) -> tuple[float, float]:
        """Learned idle seconds of work the prior puts at ``prefill_s`` of prefill and
        ``rest_s`` of everything else (fixed cost, decode steps) on ``worker``, and the
        relative standard error of that figure."""
        total_s = prefill_s + rest_s
        if total_s <= 0:
            return 0.0, 0.0
        share = prefill_s / total_s
        key, m = self._engine(kind, worker)
        return self.engine.shared(key, m, share, OWN_FACTOR_RATIO) * total_s, m.sd(share)

    def _idle_ratio_s(self, task: CoreTask, group: WorkerGroup,
                      new_tokens: int) -> tuple[float, float]:
        """The prior's idle seconds for ``task`` alone on a worker of ``group``, answering
        ``new_tokens`` (its members share one prior), and the least learned idle ratio over
        its members for work of that shape."""
        prior = group.prior
        prefill_s = task.num_prompt_tokens * prior.prefill_s_per_token
        total_s = prefill_s + prior.service_s(0, new_tokens, 1, _context_tokens(task, new_tokens))
        if total_s <= 0:
            return 0.0, 1.0
        share = prefill_s / total_s
        return total_s, min(self.idle_ratio(task.kind, w, share) for w in group.members.values())

    def factor(self, kind: str, worker: WorkerLoad) -> float:
        """The speed factor placement uses: the kind's, over all its workers, unless this
        worker's own differs from it by more than ``OWN_FACTOR_RATIO``. Like workers then
        share one factor and are told apart by their load alone, as the prior tells them; a
        slower or faster one gets its own."""
        prior = worker.spec.prior
        return self.contended.shared_factor(
            kind, self.model(kind, worker),
            callable_kind=not (prior.prefill_s_per_token or prior.decode_s_per_step))

    def service_s(self, task: CoreTask, worker: WorkerLoad,
                  instead_of: str | None = None) -> float:
        """Predicted service of ``task`` joining ``worker`` now: in the batch it joins, with
        that batch's KV cache; in the place of the task ``instead_of`` (a preemption's victim,
        still counted there) where one is given."""
        kv = self.kv_tokens(worker)
        others = len(worker.in_flight)
        if instead_of is not None and instead_of in worker.in_flight:
            others -= 1
            gone = self._started.get(worker.worker_id, {}).get(instead_of)
            if gone is not None:
                kv -= gone.ctx_tokens
        batch = min(others + 1, worker.spec.concurrency)
        factor = self.factor(task.kind, worker)
        return max(factor * self._prior_s(task, worker.spec.prior, batch, kv), 1e-6)

    def service_sd_s(self, task: CoreTask, worker: WorkerLoad) -> float:
        return self.service_s(task, worker) * (math.exp(self.model(task.kind, worker).sd()) - 1)

    def idle_service_s(self, task: CoreTask, group: WorkerGroup) -> float:
        """The best case on an idle worker of ``group``: ``task`` alone in its batch, with a
        short answer (``short_new_tokens``), on the learned engine model of the group's
        fastest worker (the prior, before any telemetry).

        The engine model has the batch's contention taken out, so a busy pool does not make
        an idle worker look slow and admission refuses only what an idle worker cannot do. It
        matters most where the prior knows little: a CPU callable's prior is the dispatch
        cost, 1 ms, and a 100 ms callable must not be started 1 ms before its deadline."""
        prior_s, ratio = self._idle_ratio_s(task, group, self.short_new_tokens(task))
        return max(ratio * prior_s, 1e-6)

    def planned_idle_s(self, task: CoreTask, group: WorkerGroup) -> float:
        """What expiry plans with: the idle figure at the planned answer length (the top of
        the recent ones, ``NEW_TOKENS_QUANTILE``), on the learned engine model of the group's
        fastest worker but never faster than the prior.

        Not the short answer admission takes: a task started so late that only a short answer
        makes it mostly misses, and the batch slot it took delays the next task (planning
        expiry at the 5th percentile of answer lengths cost LOW work 9 points of deadlines on
        the conversation trace at full load and HIGH work 2 points on the bursty financial
        mix). Not faster than the prior: the engine model is a mean, and where the work itself
        varies (a CPU callable of 10-20 ms) a task started later than the prior allows mostly
        misses (CRITICAL work on the CPU pool met fewer deadlines so)."""
        return self.idle_cases_s(task, group)[1]

    def idle_cases_s(self, task: CoreTask, group: WorkerGroup) -> tuple[float, float]:
        short = self.short_new_tokens(task)
        prior_s, ratio = self._idle_ratio_s(task, group, short)
        idle_s = max(ratio * prior_s, 1e-6)
        planned = round(self.expected_new_tokens(task))
        if planned != short:  # (a CPU task answers no tokens: the same figures)
            prior_s, ratio = self._idle_ratio_s(task, group, planned)
        return idle_s, max(max(ratio, 1.0) * prior_s, idle_s)

    def started(self, task: CoreTask, worker: WorkerLoad, now_s: float) -> None:
        """Note that ``task`` was placed on ``worker`` at ``now_s``. If the worker's batch has
        room, the task joins it: its prompt joins the worker's prefill backlog and its context
        the batch's KV cache, and what was ahead of it is kept for its completion. Else it waits
        in a prefetch slot, computing and reading nothing, until a task of the batch leaves
        (``_finished``, ``_prune``)."""
        prior = worker.spec.prior
        if not prior.prefill_s_per_token:
            return  # no prompt to compute: the batch's contention is the prior's batch model
        wid = worker.worker_id
        if wid not in self._backlog:
            self._backlog[wid] = PrefillBacklog()
            self._started[wid] = {}
            self._waiting[wid] = {}
        self._concurrency[wid] = worker.spec.concurrency
        # The task is already in the load table's in-flight set, not yet here: a record of a
        # task the worker no longer holds may hide behind it, so look whenever the counts meet.
        self._prune(worker, slack=1)
        self._drop(wid, task.task_id)  # a record of an earlier binding here
        ctx = _context_tokens(task, round(self.expected_new_tokens(task)))
        own_s = task.num_prompt_tokens * prior.prefill_s_per_token
        least_s = self.least_service_s(task, worker)
        if len(self._started[wid]) < worker.spec.concurrency:
            self._enter(wid, task.task_id, own_s, ctx, least_s, now_s)
        else:
            self._waiting[wid][task.task_id] = (own_s, ctx, least_s)

    def _enter(self, wid: str, task_id: str, own_s: float, ctx: float, least_s: float,
               now_s: float) -> None:
        """``task_id`` joins worker ``wid``'s batch at ``now_s``; it cannot finish in less than
        ``least_s`` (``least_service_s``)."""
        backlog = self._backlog[wid]
        ahead_s = backlog.place(own_s, now_s)
        kv = self._kv[wid] = self._kv.get(wid, 0.0) + ctx
        self._started[wid][task_id] = _Started(ahead_s, backlog.placed_s, own_s, ctx, kv,
                                               now_s + least_s)

    def _admit_waiting(self, wid: str, concurrency: int, now_s: float) -> None:
        """Tasks waiting in worker ``wid``'s prefetch slots join its batch, in the order they
        were placed, while it has room."""
        waiting = self._waiting[wid]
        while waiting and len(self._started[wid]) < concurrency:
            task_id = next(iter(waiting))
            own_s, ctx, least_s = waiting.pop(task_id)
            self._enter(wid, task_id, own_s, ctx, least_s, now_s)

    def _prune(self, worker: WorkerLoad, slack: int = 0) -> None:
        """Tasks ``worker`` no longer holds without a completion (taken back, cancelled,
        expired) leave its prefill backlog (their whole prompt at most), its batch's KV cache
        and its prefetch slots; tasks waiting there then take the room. Looks only when the
        records outnumber the tasks the load table says it holds, less ``slack``."""
        wid = worker.worker_id
        started = self._started.get(wid)
        if started is None:
            return
        waiting = self._waiting[wid]
        if len(started) + len(waiting) <= len(worker.in_flight) - slack:
            return
        for tid in [t for t in (*started, *waiting) if t not in worker.in_flight]:
            self._drop(wid, tid)
        self._admit_waiting(wid, worker.spec.concurrency, self._backlog[wid].at_s)

    def _drop(self, wid: str, task_id: str) -> None:
        """Forget ``task_id``'s record on worker ``wid`` without a completion: its prompt
        leaves the prefill backlog (all of it at most) and its context the batch's KV cache."""
        self._waiting[wid].pop(task_id, None)
        gone = self._started[wid].pop(task_id, None)
        if gone is not None:
            backlog = self._backlog[wid]
            backlog.pending_s = max(0.0, backlog.pending_s - gone.own_s)
            self._kv[wid] = max(0.0, self._kv[wid] - gone.ctx_tokens)

    def ahead_s(self, worker: WorkerLoad, now_s: float) -> float:
        """Prior seconds of prefill placed on ``worker`` and not yet computed: what a task
        placed there now waits behind (the engine computes prompts in the order they joined)."""
        backlog = self._backlog.get(worker.worker_id)
        if backlog is None:
            return 0.0
        self._prune(worker)
        return backlog.advance(now_s)

    def kv_tokens(self, worker: WorkerLoad) -> float:
        """Tokens of KV cache the sequences in ``worker``'s batch hold over their lives: what a
        sequence placed there now shares each decode step's memory reads with."""
        self._prune(worker)
        return self._kv.get(worker.worker_id, 0.0)

    def least_service_s(self, task: CoreTask, worker: WorkerLoad) -> float:
        """A confident lower bound of ``task``'s service on ``worker``: alone in its batch,
        nothing ahead of it, a short answer (``short_new_tokens``), on the worker's engine
        model less ``MISS_CONFIDENCE_SD`` standard errors of its figure."""
        prior = worker.spec.prior
        short = self.short_new_tokens(task)
        idle_s, sd = self.engine_s(task.kind, worker,
                                   task.num_prompt_tokens * prior.prefill_s_per_token,
                                   prior.service_s(0, short, 1, _context_tokens(task, short)))
        return idle_s * math.exp(-MISS_CONFIDENCE_SD * sd)

    def earliest_slot_s(self, worker: WorkerLoad, now_s: float) -> float | None:
        """A confident lower bound of when ``worker``, which has no free slot, could start
        one more task: its batch must lose one sequence for each task waiting in its
        prefetch slots and one more, and no sequence ends before its start plus its least
        service. None where the worker's sequences are not tracked (a CPU worker's)."""
        started = self._started.get(worker.worker_id)
        if not started:
            return None
        self._prune(worker)
        ends = sorted(st.least_end_s for st in started.values())
        if not ends:
            return None
        return max(now_s, ends[min(len(self._waiting[worker.worker_id]), len(ends) - 1)])

    def earliest_finish_s(self, task: CoreTask, worker: WorkerLoad, now_s: float) -> float:
        """A confident lower bound of when ``task`` finishes if placed on ``worker`` now, with a
        short answer (``short_new_tokens``), after the wait for a slot where the worker has none
        free: the larger of two bounds.

        - The prefill ahead of it, then its own idle service, on the worker's engine model
          less ``MISS_CONFIDENCE_SD`` standard errors of that model's figure.
        - Its service in the batch it joins at the contended factor, less
          ``MISS_CONTENDED_SD`` standard deviations of single completions about it: where the
          contention of this worker's batches is steady, a completion well below it is rare.
        """
        batch = min(len(worker.in_flight) + 1, worker.spec.concurrency)
        prior = worker.spec.prior
        short = self.short_new_tokens(task)
        ctx = _context_tokens(task, short)
        idle_s, sd = self.engine_s(task.kind, worker, self.ahead_s(worker, now_s)
                                   + task.num_prompt_tokens * prior.prefill_s_per_token,
                                   prior.service_s(0, short, 1, ctx))
        ahead_bound_s = idle_s * math.exp(-MISS_CONFIDENCE_SD * sd)
        c = self.model(task.kind, worker)
        contended = (self.factor(task.kind, worker)
                     * math.exp(-MISS_CONTENDED_SD * math.sqrt(max(c.log_var, 0.0))))
        batch_bound_s = contended * prior.service_s(task.num_prompt_tokens, short, batch,
                                                    self.kv_tokens(worker) + ctx)
        return now_s + worker.wait_s() + max(ahead_bound_s, batch_bound_s)

    def _finished(self, task_id: str, worker_id: str, concurrency: int,
                  now_s: float) -> tuple[float, float | None]:
        """What ``task_id``'s start on ``worker_id`` noted, now it has finished: prior seconds
        of other requests' prefill the worker computed while it was in its batch (what was
        ahead of it, plus what was placed after it and is no longer pending), and the KV cache
        of the batch it joined, in tokens (0 and None for a task whose start was not seen).
        It leaves the batch, and the first task waiting in a prefetch slot takes its place."""
        start = self._started.get(worker_id, {}).pop(task_id, None)
        if start is None:
            self._waiting.get(worker_id, {}).pop(task_id, None)
            return 0.0, None
        self._kv[worker_id] = max(0.0, self._kv[worker_id] - start.ctx_tokens)
        backlog = self._backlog[worker_id]
        after_s = backlog.placed_s - start.placed_s
        # The task's own prompt was computed before it finished, and so was all that was ahead
        # of it: what is pending now joined after it.
        others_s = max(0.0, start.ahead_s + after_s - min(backlog.advance(now_s), after_s))
        self._admit_waiting(worker_id, concurrency, now_s)
        return others_s, start.kv_tokens

    def observe(self, task: CoreTask, completion: Completion, now_s: float) -> None:
        prior = self.priors.get(completion.worker_id)
        concurrency = self._concurrency.get(completion.worker_id, 1)
        others_s, kv_tokens = self._finished(task.task_id, completion.worker_id, concurrency,
                                             now_s)
        if prior is None or not completion.ok:
            return  # a worker never scored (already gone), or a failure: no service to learn
        new = completion.num_generated_tokens if task.max_new_tokens else 0
        rest_s = prior.service_s(0, new, completion.batch_size, kv_tokens)
        own_prefill_s = task.num_prompt_tokens * prior.prefill_s_per_token
        expected_s = own_prefill_s + rest_s
        if expected_s <= 0 or completion.service_s <= 0:
            return
        key = (task.kind, completion.worker_id)
        self.contended.learn(key, completion.service_s / expected_s, self.forget)
        # The engine model sees the prefill the task waited on, its own and the others', and
        # the decode steps for the KV cache of the batch it joined: the contention is in the
        # features.
        prefill_s = own_prefill_s + others_s
        engine_key = self._engine_key(task.kind, completion.worker_id)
        engine = self.engine.learn(engine_key, prefill_s / (prefill_s + rest_s),
                                   completion.service_s / (prefill_s + rest_s), self.forget)
        counted = self._engines_counted.get(engine_key)
        if counted is None or max(abs(engine.log_prefill - counted[0]),
                                  abs(engine.log_decode - counted[1])) > FIGURES_LOG_STEP:
            self._engines_counted[engine_key] = (engine.log_prefill, engine.log_decode)
            self._engines_version += 1
        backlog = self._backlog.get(completion.worker_id)
        if backlog is not None:
            backlog.advance(now_s)
            backlog.drain_factor = engine.prefill_factor
        if task.max_new_tokens:
            lengths = self._new_ratios.setdefault(
                task.kind, RecentQuantile(NEW_TOKENS_QUANTILE, NEW_TOKENS_KEPT,
                                          BEST_NEW_TOKENS_QUANTILE))
            before = (lengths.value, lengths.low)
            self.new_ratio[task.kind] = lengths.add(min(1.0, new / task.max_new_tokens))
            if (lengths.value, lengths.low) != before:
                self._answers_version[task.kind] = self._answers_version.get(task.kind, 0) + 1

    def figures_version(self, task: CoreTask) -> int:
        # Both counts only grow, so their sum grows whenever either does.
        return self._engines_version + self._answers_version.get(task.kind, 0)

    def forget_worker(self, worker_id: str) -> None:
        self.contended.forget_worker(worker_id)
        self.engine.forget_worker(worker_id)
        self.priors.pop(worker_id, None)
        self._pools.pop(worker_id, None)
        for key in [k for k in self._engine_keys if k[1] == worker_id]:
            del self._engine_keys[key]
            self._engines.pop(key, None)
        self._backlog.pop(worker_id, None)
        self._started.pop(worker_id, None)
        self._waiting.pop(worker_id, None)
        self._kv.pop(worker_id, None)
        self._concurrency.pop(worker_id, None)

    def table(self) -> list[dict[str, Any]]:
        """Per (worker, kind): the learned time of a typical task (500 prompt tokens, 100 new
        at the learned length ratio, alone) in a busy batch and on an idle worker, the
        prior's, the engine model's prefill and decode factors, observations, uncertainty."""
        rows = []
        for (kind, wid), m in sorted(self.models.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            prior = self.priors[wid]
            typical_new = (round(100 * self.new_ratio.get(kind, 1.0))
                           if prior.decode_s_per_step else 0)
            prior_s = prior.service_s(500 if prior.prefill_s_per_token else 0, typical_new, 1)
            e = self.engine.get(self._engine_key(kind, wid))
            prefill_s = 500 * prior.prefill_s_per_token
            idle = e.ratio(prefill_s / prior_s if prior_s > 0 else 0.0)
            # A worker running callables has no tokens: its one engine figure is idle_ms.
            tokens = bool(prior.prefill_s_per_token or prior.decode_s_per_step)
            rows.append({"worker": wid, "kind": kind, "predicted_ms": 1e3 * m.factor * prior_s,
                         "idle_ms": 1e3 * idle * prior_s,
                         "prior_ms": 1e3 * prior_s, "speed_factor": m.factor,
                         "prefill_factor": e.prefill_factor if tokens else None,
                         "decode_factor": e.decode_factor if tokens else None,
                         "observations": m.n,
                         "uncertainty_ms": 1e3 * m.factor * prior_s * (math.exp(m.sd()) - 1)})
        return rows

    def state(self) -> dict[str, Any]:
        return {"forget": self.forget, "new_ratio": dict(self.new_ratio),
                "priors": {w: asdict(p) for w, p in self.priors.items()},
                "pools": dict(self._pools),
                "models": [{"kind": k, "worker": w, **asdict(m)}
                           for (k, w), m in self.models.items()],
                "engine_models": [{"group": g, "worker": w, **asdict(m)}
                                  for (g, w), m in self.engine.models.items()]}

    def restore(self, state: dict[str, Any], trust: float = 0.25) -> None:
        """Load a saved state. Restored models are trusted less (their spread is widened by
        ``1 / trust``): a restarted worker may not be the machine it was."""
        self._engines_version += 1  # every figure may have moved
        self.new_ratio.update(state.get("new_ratio", {}))
        self.priors.update({w: ServicePrior(**p) for w, p in state.get("priors", {}).items()})
        self._pools.update(state.get("pools", {}))
        self._engine_keys.clear()
        self._engines.clear()
        contended_rows = state.get("models", [])
        for row in contended_rows:
            if row["worker"] not in self.priors or "log_factor" not in row:
                continue  # a worker not known here, or a model of another kind
            self.contended.add((row["kind"], row["worker"]),
                               SpeedModel(float(row["log_factor"]), float(row["log_var"]) / trust,
                                          int(row["n"])))
        # A state saved before engine models learned two factors kept one speed factor per
        # (kind, worker); before it kept engine models at all, a worker without prompts to
        # compute (a CPU worker) had no contention to take out, so its model was its engine's.
        # Such a state does not say an engine worker's pool, so the engine models of engine
        # workers start again (from the prior); those of CPU workers are restored.
        engine_rows = state.get("engine_models", [
            r for r in contended_rows if r.get("worker") in self.priors
            and not self.priors[r["worker"]].prefill_s_per_token])
        for row in engine_rows:
            wid = row.get("worker")
            if wid not in self.priors:
                continue
            if "log_prefill" in row:
                fields = {k: row[k] for k in EngineModel.__slots__ if k in row}
                m = EngineModel(**fields)
                m.p00, m.p01, m.p11 = m.p00 / trust, m.p01 / trust, m.p11 / trust
                self.engine.add((row["group"], wid), m)
            elif "log_factor" in row and not (self.priors[wid].prefill_s_per_token
                                               or self.priors[wid].decode_s_per_step):
                factor = math.exp(float(row["log_factor"]))
                self.engine.add(self._engine_key(row["kind"], wid),
                                EngineModel.starting_at(factor, factor))


@dataclass(slots=True)
class _Started:
    """What a worker's start of a task noted for its completion: prior seconds of prefill ahead
    of it, of prefill ever placed on the worker up to its own, and its own; its context over
    its life and the KV cache of the batch it joined, in tokens; the earliest it can end
    (its start plus its least service, ``AdaptiveEstimator.least_service_s``)."""

    ahead_s: float
    placed_s: float
    own_s: float
    ctx_tokens: float
    kv_tokens: float
    least_end_s: float


def _context_tokens(task: CoreTask, new_tokens: int) -> float:
    """A sequence's context over its life, on average: its prompt and half its answer."""
    return task.num_prompt_tokens + 0.5 * new_tokens


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

    def _misses_here(self, task: CoreTask, candidates: list[WorkerLoad], now_s: float) -> bool:
        """Whether every free worker that could hold ``task`` would, by the estimator's
        confident lower bound (``earliest_finish_s``), finish it past its deadline if placed
        there now."""
        est = self.estimator
        return math.isfinite(task.deadline_s) and not any(
            est.earliest_finish_s(task, w, now_s) <= task.deadline_s for w in candidates)

    def _misses_everywhere(self, task: CoreTask, table: LoadTable,
                           candidates: list[WorkerLoad], now_s: float) -> bool:
        """Whether every worker that could hold ``task`` would, by the estimator's confident
        lower bounds, finish it past its deadline, given that every free one
        (``candidates``) would (``_misses_here``): a full one if placed when it could first
        take one more task (``earliest_slot_s``), then served at its least
        (``least_service_s``). Decided only where every such worker is bounded (the pool
        small enough to score exactly, and each full worker's sequences tracked): a worker not
        looked at may be the one that makes it."""
        est = self.estimator
        if len(table.ordered(task.pool)) > self.exact_up_to:
            return False
        looked = {id(w) for w in candidates}
        for g in table.groups(task.pool):
            if not eligible(task, g):
                continue
            for w in g.members.values():
                if id(w) in looked:
                    continue
                slot_s = est.earliest_slot_s(w, now_s) if not (w.held or w.alone_task) else None
                if slot_s is None or slot_s + est.least_service_s(task, w) <= task.deadline_s:
                    return False
        return True

    def state(self) -> dict[str, Any] | None:
        return self.estimator.state()

    def restore(self, state: dict[str, Any]) -> int:
        self.estimator.restore(state)
        return len(state.get("models", []))

    def learned(self) -> list[dict[str, Any]]:
        return self.estimator.table()

    def thinly_learned(self, task: CoreTask, table: LoadTable) -> bool:
        est = self.estimator
        return any(est.engine_model(task.kind, w).n < PROBE_EVIDENCE
                   for g in table.groups(task.pool) if eligible(task, g)
                   for w in g.members.values())

    def place(self, task: CoreTask, table: LoadTable, now_s: float) -> Choice | None:
        return self._choose(task, table, now_s)

    def service_s(self, task: CoreTask, worker: WorkerLoad, instead_of: str | None = None
                  ) -> float:
        return self.estimator.service_s(task, worker, instead_of)

    def bound(self, task: CoreTask, worker: WorkerLoad, now_s: float) -> None:
        # The worker's prefill backlog takes the task's prompt once the core has bound it (a
        # choice the core ends as a miss never reaches the worker).
        self.estimator.started(task, worker, now_s)

    def _choose(self, task: CoreTask, table: LoadTable, now_s: float) -> Choice | None:
        est = self.estimator
        scored = []
        candidates = self._candidates(task, table)
        for w in candidates:
            service = est.service_s(task, w)
            # The prompts placed on the worker and not yet computed hold up this one's start:
            # like workers with the same learned speed differ by that first.
            ahead_s = est.prefill_factor(task.kind, w) * est.ahead_s(w, now_s)
            scored.append((now_s + w.wait_s() + ahead_s + service, service, w))
        if not scored:
            return None
        if self._misses_here(task, candidates, now_s):
            f, svc, w = min(scored, key=lambda s: (s[0], s[2].worker_id))
            if self._misses_everywhere(task, table, candidates, now_s):
                return Choice(w, svc, f, misses=True)
            # A free worker would only run it past its deadline, taking a slot another task
            # can use: it is to wait, keeping its place, for a full worker that may still
            # make it. On the bursty long-prompt workload at 1x and 4x this took HIGH work
            # from 20.4% and 9.5% of its deadlines met to 20.9% and 9.8%, its p99 from 5.9 s
            # and 7.3 s to 5.5 s and 6.0 s, with as few false rejections. (Judged at the
            # contended factor itself rather than one standard deviation under it, it met
            # 25.6% and 15.8% but refused falsely 4.3% of the tasks: waiting is then often
            # the wrong guess.)
            return Choice(w, svc, f, waits=True)
        # The planned answer is at least the median one, so a task that makes it as planned
        # somewhere is not likely late: the central estimates are figured only when none does.
        if (min(s[0] for s in scored) > task.deadline_s and math.isfinite(task.deadline_s)
                and all(est.likely_finish_s(task, s[2], now_s) > task.deadline_s
                        for s in scored)):
            # Likely late wherever it runs now, though not surely: the core lets queued work
            # that is likely to make its deadline have the free slots first, and runs this on
            # one still free after them. On the financial mix at inter-arrival CV 4, load 0.9
            # and 1.2, that took HIGH deadlines met from 94.55% and 87.85% to 96.08% and
            # 88.27% (edf: 94.68%, 88.76%; seeds 0-2); judged at the planned answer length
            # instead of the median, it cost 1.6 points at 1.2.
            f, svc, w = min(scored, key=lambda s: (s[0], s[2].worker_id))
            return Choice(w, svc, f, late=True)
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

    Least loaded is the fewest tasks per slot, then the least predicted work bound per slot.
    Work first sends every short task away from the workers running long generations and
    piles them into the others' batches (on the financial mix with Poisson arrivals it made
    HIGH p99 11% longer; at inter-arrival CV 4 it made it 2% shorter).
    """
    finish_s, service_s, _ = min(scored, key=lambda s: (s[0], s[2].worker_id))
    near = [s for s in scored if s[0] <= finish_s + (1.0 - SAME_SPEED) * service_s]
    f, svc, w = min(near, key=lambda s: (len(s[2].in_flight) / s[2].spec.concurrency,
                                         s[2].backlog_s / s[2].spec.concurrency,
                                         s[2].worker_id))
    return Choice(w, svc, f)

