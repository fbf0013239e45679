"""Adaptive placement: learn each worker's real service time from completion telemetry.

Workers of one pool are rarely equal (a 7B on an L4 next to one on an H100, a noisy neighbour,
thermal throttling), and the engine prior cannot know. For every (task kind, worker) pair a
small recursive-least-squares model learns

    service_s ~ theta . x,   x = [1, prompt_tokens / 1000, new_tokens * batch_factor / 100]

where ``batch_factor`` is the prior's slowdown for the batch the task ran in. It starts at the
worker's engine prior (so a new worker is sensible from its first task), forgets old data with a
factor ``forget`` (about ``1 / (1 - forget)`` completions of memory, so drift is tracked within
tens of completions), and reports an uncertainty: the residual scale times ``sqrt(x' P x)``.
A model whose errors jump (a worker slowed down) has its covariance widened so it relearns fast.
The generated length is learned per kind as a fraction of ``max_new_tokens``.

Placement is filter -> score -> pick:
- filter: the pool's free workers that can hold the task;
- score: predicted finish = the worker's backlog wait + learned service;
- pick: the earliest finish, with two deadline-aware twists.
  * Exploration, driven by uncertainty and bounded: non-CRITICAL tasks score an uncertain worker
    up to ``explore`` standard deviations (at most ``max_bonus`` of its service time) faster,
    so little-known workers get tried. CRITICAL tasks never explore, and never go to a worker
    predicted to miss their deadline while another is predicted to meet it.
  * Keeping fast workers for urgent work: a LOW task whose deadline is far off goes to the
    slowest workers that still finish it with half its slack to spare, and among those to the
    one that finishes it first.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from raysched.core.load import LoadTable, WorkerGroup, WorkerLoad
from raysched.core.placement import Choice, EstimatorPlacement, eligible
from raysched.core.protocol import Completion
from raysched.core.types import CoreTask, Priority, ServicePrior

PROMPT_UNIT = 1000.0
TOKENS_UNIT = 100.0
# Workers whose predicted service is within this factor of each other count as equally fast:
# learned models of identical workers differ by noise, and noise must not decide placement.
SAME_SPEED = 0.9


def _features(prior: ServicePrior, prompt: float, new: float, batch: int) -> list[float]:
    factor = 1.0 + prior.batch_slowdown * max(batch - 1, 0)
    return [1.0, prompt / PROMPT_UNIT, new * factor / TOKENS_UNIT]


def _prior_theta(prior: ServicePrior) -> list[float]:
    """The prior's coefficients on ``_features``."""
    return [prior.fixed_s, prior.prefill_s_per_token * PROMPT_UNIT,
            prior.decode_s_per_step * TOKENS_UNIT]


@dataclass
class RLS:
    """Recursive least squares with forgetting over a few features."""

    theta: list[float]
    P: list[list[float]]
    forget: float = 0.95
    resid_var: float = 0.0
    n: int = 0
    surprises: int = 0
    max_trace: float = 0.0  # bound on trace(P): forgetting must not wind it up without limit

    @classmethod
    def from_prior(cls, prior: ServicePrior, forget: float, rel_sd: float = 0.5) -> RLS:
        theta = _prior_theta(prior)
        # The prior's own uncertainty: each coefficient within about rel_sd of its value.
        # P is in units of the residual variance, set from the same scale.
        scale = max(theta[0], 1e-4) ** 2
        P = [[(rel_sd * max(t, 1e-6)) ** 2 / scale if i == j else 0.0 for j in range(3)]
             for i, t in enumerate(theta)]
        max_trace = 100.0 * sum(P[i][i] for i in range(3))
        return cls(theta, P, forget, resid_var=scale, max_trace=max_trace)

    def predict(self, x: list[float]) -> float:
        return sum(t * v for t, v in zip(self.theta, x, strict=True))

    def sd(self, x: list[float]) -> float:
        Px = [sum(self.P[i][j] * x[j] for j in range(3)) for i in range(3)]
        xPx = sum(a * b for a, b in zip(x, Px, strict=True))
        return math.sqrt(max(self.resid_var, 0.0) * max(xPx, 0.0))

    def update(self, x: list[float], y: float) -> None:
        err = y - self.predict(x)
        Px = [sum(self.P[i][j] * x[j] for j in range(3)) for i in range(3)]
        # Spread of one new observation: noise plus what the model does not know yet.
        xPx = max(sum(a * b for a, b in zip(x, Px, strict=True)), 0.0)
        obs_sd = math.sqrt(max(self.resid_var, 0.0) * (1.0 + xPx))
        # A run of large errors means the worker changed: widen P so the next few completions
        # move the estimate a long way, instead of averaging the new speed into the old one.
        big = self.n >= 5 and abs(err) > 3 * obs_sd + 1e-6
        self.surprises = self.surprises + 1 if big else 0
        if self.surprises >= 3:
            self.P = [[v * 100.0 for v in row] for row in self.P]
            Px = [sum(self.P[i][j] * x[j] for j in range(3)) for i in range(3)]
            self.surprises = 0
        Px = [sum(self.P[i][j] * x[j] for j in range(3)) for i in range(3)]
        denom = self.forget + sum(a * b for a, b in zip(x, Px, strict=True))
        k = [v / denom for v in Px]
        self.theta = [t + ki * err for t, ki in zip(self.theta, k, strict=True)]
        P = [[(self.P[i][j] - k[i] * Px[j]) / self.forget for j in range(3)] for i in range(3)]
        # Keep P symmetric and bounded: directions the data never excites (a CPU task has no
        # tokens) would otherwise grow by 1/forget per update until the numbers break.
        P = [[0.5 * (P[i][j] + P[j][i]) for j in range(3)] for i in range(3)]
        trace = sum(P[i][i] for i in range(3))
        if self.max_trace and trace > self.max_trace:
            P = [[v * self.max_trace / trace for v in row] for row in P]
        self.P = P
        # Residual variance, exponentially weighted with the same memory.
        self.resid_var = self.forget * self.resid_var + (1 - self.forget) * err * err
        self.n += 1

    def state(self) -> dict[str, Any]:
        return {"theta": self.theta, "P": self.P, "resid_var": self.resid_var, "n": self.n,
                "max_trace": self.max_trace}


@dataclass
class AdaptiveEstimator:
    """Learned service time per (kind, worker), starting from each worker's prior."""

    forget: float = 0.95
    models: dict[tuple[str, str], RLS] = field(default_factory=dict)
    priors: dict[str, ServicePrior] = field(default_factory=dict)
    # Generated tokens as a fraction of max_new_tokens, per kind (EWMA).
    new_ratio: dict[str, float] = field(default_factory=dict)

    def model(self, kind: str, worker: WorkerLoad) -> RLS:
        key = (kind, worker.worker_id)
        m = self.models.get(key)
        if m is None:
            self.priors[worker.worker_id] = worker.spec.prior
            m = self.models[key] = RLS.from_prior(worker.spec.prior, self.forget)
        return m

    def expected_new_tokens(self, task: CoreTask) -> float:
        return task.max_new_tokens * self.new_ratio.get(task.kind, 1.0)

    def _x(self, task: CoreTask, worker: WorkerLoad, batch: int) -> list[float]:
        return _features(worker.spec.prior, task.num_prompt_tokens,
                         self.expected_new_tokens(task), batch)

    def service_s(self, task: CoreTask, worker: WorkerLoad) -> float:
        batch = min(len(worker.in_flight) + 1, worker.spec.concurrency)
        return max(self.model(task.kind, worker).predict(self._x(task, worker, batch)), 1e-6)

    def service_sd_s(self, task: CoreTask, worker: WorkerLoad) -> float:
        batch = min(len(worker.in_flight) + 1, worker.spec.concurrency)
        return self.model(task.kind, worker).sd(self._x(task, worker, batch))

    def idle_service_s(self, task: CoreTask, group: WorkerGroup) -> float:
        """The best case on an idle worker of ``group``: the lower of the engine prior and
        the learned model. Completions are measured inside busy batches, so the learned time
        carries contention an idle worker does not have; admitting on it alone would refuse
        tasks an idle worker meets. A worker that is really slower is caught by expiry."""
        best_s = math.inf
        for w in group.members.values():
            x = self._x(task, w, 1)
            prior_s = sum(t * v for t, v in zip(_prior_theta(w.spec.prior), x, strict=True))
            best_s = min(best_s, prior_s, self.model(task.kind, w).predict(x))
        return max(best_s, 1e-6)

    def observe(self, task: CoreTask, completion: Completion, now_s: float) -> None:
        prior = self.priors.get(completion.worker_id)
        if prior is None:
            return  # a worker never scored (already gone)
        m = self.models.get((task.kind, completion.worker_id))
        if m is None:
            m = self.models[(task.kind, completion.worker_id)] = RLS.from_prior(prior, self.forget)
        new = completion.num_generated_tokens if task.max_new_tokens else 0
        m.update(_features(prior, task.num_prompt_tokens, new, completion.batch_size),
                 completion.service_s)
        if task.max_new_tokens:
            r = min(1.0, new / task.max_new_tokens)
            old = self.new_ratio.get(task.kind, 1.0)
            self.new_ratio[task.kind] = self.forget * old + (1 - self.forget) * r

    def forget_worker(self, worker_id: str) -> None:
        for key in [k for k in self.models if k[1] == worker_id]:
            del self.models[key]
        self.priors.pop(worker_id, None)

    def table(self) -> list[dict[str, Any]]:
        """Per (worker, kind): the learned time of a typical task, observations, uncertainty."""
        rows = []
        for (kind, wid), m in sorted(self.models.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            prior = self.priors[wid]
            typical_new = 100 * self.new_ratio.get(kind, 1.0) if prior.decode_s_per_step else 0
            x = _features(prior, 500 if prior.prefill_s_per_token else 0, typical_new, 1)
            rows.append({"worker": wid, "kind": kind, "predicted_ms": 1e3 * m.predict(x),
                         "prior_ms": 1e3 * RLS.from_prior(prior, m.forget).predict(x),
                         "observations": m.n, "uncertainty_ms": 1e3 * m.sd(x)})
        return rows

    def state(self) -> dict[str, Any]:
        return {"forget": self.forget, "new_ratio": dict(self.new_ratio),
                "priors": {w: asdict(p) for w, p in self.priors.items()},
                "models": [{"kind": k, "worker": w, **m.state()}
                           for (k, w), m in self.models.items()]}

    def restore(self, state: dict[str, Any], trust: float = 0.25) -> None:
        """Load a saved state. Restored models are trusted less (covariance widened by
        ``1 / trust``): a restarted worker may not be the machine it was."""
        self.new_ratio.update(state.get("new_ratio", {}))
        self.priors.update({w: ServicePrior(**p) for w, p in state.get("priors", {}).items()})
        for row in state.get("models", []):
            if row["worker"] not in self.priors:
                continue
            P = [[v / trust for v in r] for r in row["P"]]
            m = RLS(list(row["theta"]), P, self.forget, float(row["resid_var"]), int(row["n"]),
                    max_trace=float(row.get("max_trace", 0.0)) / trust)
            self.models[(row["kind"], row["worker"])] = m


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
            finish, service, w = min(meets or scored, key=lambda s: (s[0], s[2].worker_id))
            return Choice(w, service, finish)
        if task.priority is Priority.LOW and math.isfinite(task.deadline_s):
            spare = [s for s in scored if s[0] <= task.deadline_s - 0.5 * (task.deadline_s - now_s)]
            if len(spare) > 1:
                # The slowest workers that still make it with room to spare; among workers
                # about as slow (within SAME_SPEED), the earliest finish, so LOW work spreads
                # over idle workers instead of queueing on one.
                slowest_s = max(s[1] for s in spare)
                alike = [s for s in spare if s[1] >= slowest_s * SAME_SPEED]
                finish, service, w = min(alike, key=lambda s: (s[0], s[2].worker_id))
                return Choice(w, service, finish)

        def optimistic(s: tuple[float, float, WorkerLoad]) -> tuple[float, str]:
            bonus = min(self.explore * est.service_sd_s(task, s[2]), self.max_bonus * s[1])
            return (s[0] - bonus, s[2].worker_id)

        finish, service, w = min(scored, key=optimistic)
        return Choice(w, service, finish)

