"""Benchmark workloads: the financial mix, arrival processes, and Azure trace replay.

Offered load is computed, not guessed. A task's work is the worker time it takes when its worker
runs a full batch of ``k`` (1 for a CPU worker): its prefill, which holds up the whole batch, plus
its share of the decode steps, ``W = prefill_s + new_tokens * step_s(k) / k``. A pool of ``c``
workers then runs at utilisation ``rho = lambda * E[W] / c``; at rho = 1 every worker is busy all
the time with full batches. ``--load`` sets rho for every pool by scaling its arrival rate.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from raysched.core.types import CoreTask, Priority
from raysched.sim.workers import SimCPUWorker, SimLLMWorker, SimTask


@dataclass(frozen=True)
class PoolSpec:
    """``count`` workers; ``preset`` names a roofline (LLM) or is "cpu"."""

    name: str
    count: int
    preset: str = "cpu"
    max_batch_size: int = 1
    speeds: tuple[float, ...] = ()  # per-worker service multipliers; default all 1.0

    def build(self) -> list[tuple[str, SimCPUWorker | SimLLMWorker]]:
        workers: list[tuple[str, SimCPUWorker | SimLLMWorker]] = []
        for i in range(self.count):
            wid = f"{self.name}-{i}"
            speed = self.speeds[i] if i < len(self.speeds) else 1.0
            if self.preset == "cpu":
                workers.append((wid, SimCPUWorker(wid, speed=speed)))
            else:
                workers.append((wid, SimLLMWorker(wid, self.preset, self.max_batch_size,
                                                  speed=speed)))
        return workers



@dataclass(frozen=True)
class KindSpec:
    """One kind of work. ``share`` is its fraction of its pool's offered work."""

    kind: str
    priority: Priority
    pool: str
    sla_ms: float
    share: float
    prompt_tokens: tuple[int, int] = (0, 0)
    max_new_tokens: int = 0
    true_new_tokens: tuple[int, int] = (0, 0)
    cpu_service_ms: tuple[float, float] = (0.0, 0.0)


# The seeds' mix: sizes from the mission (classification 10-20 ms on CPU, summaries 100-500 ms on
# 7B, reasoning 1-5 s on 70B, agents 5-30 s). Outputs stop before max_new_tokens (an end token),
# which only the clairvoyant policy knows in advance.
FINANCIAL_MIX: tuple[KindSpec, ...] = (
    KindSpec("classification", Priority.CRITICAL, "cpu", 50.0, 1.0, cpu_service_ms=(10.0, 20.0)),
    KindSpec("summarization", Priority.HIGH, "llm-7b", 2_000.0, 0.5, (200, 800), 48, (8, 48)),
    KindSpec("agent", Priority.LOW, "llm-7b", 120_000.0, 0.5, (500, 2_000), 2_000, (400, 2_000)),
    KindSpec("reasoning", Priority.MEDIUM, "llm-70b", 15_000.0, 1.0, (200, 800), 160, (30, 160)),
)

DEFAULT_CLUSTER: tuple[PoolSpec, ...] = (
    PoolSpec("cpu", 4),
    PoolSpec("llm-7b", 4, "7b", 16),
    PoolSpec("llm-70b", 2, "70b", 8),
)


def scale_cluster(cluster: tuple[PoolSpec, ...], factor: int) -> tuple[PoolSpec, ...]:
    return tuple(replace(p, count=p.count * factor) for p in cluster)


def work_s(pool: PoolSpec, prompt: int, new: int, cpu_s: float = 0.0) -> float:
    """Worker time one task takes at a full batch: its prefill plus its share of decoding."""
    if pool.preset == "cpu":
        return cpu_s
    prior = SimLLMWorker("probe", pool.preset, pool.max_batch_size).prior
    k = pool.max_batch_size
    decode_s = prior.service_s(0, new, k) - prior.fixed_s
    return prior.fixed_s + prompt * prior.prefill_s_per_token + decode_s / k


def _mean_work_s(spec: KindSpec, pool: PoolSpec) -> float:
    """E[S_k] for a kind, from the means of its size ranges (service is linear in them)."""
    prompt = sum(spec.prompt_tokens) / 2
    new = sum(spec.true_new_tokens) / 2
    return work_s(pool, round(prompt), round(new), sum(spec.cpu_service_ms) / 2e3)


def arrival_rates(mix: tuple[KindSpec, ...], cluster: tuple[PoolSpec, ...], load: float
                  ) -> dict[str, float]:
    """Arrivals per second per kind that put every pool at utilisation ``load``."""
    pools = {p.name: p for p in cluster}
    rates = {}
    for spec in mix:
        pool = pools[spec.pool]
        shares = sum(s.share for s in mix if s.pool == spec.pool)
        work_per_s = load * pool.count * spec.share / shares
        rates[spec.kind] = work_per_s / _mean_work_s(spec, pool)
    return rates


def _gaps(rng: random.Random, rate: float, cv: float) -> Iterator[float]:
    """Inter-arrival gaps with mean 1/rate: exponential (cv = 1) or gamma with the given CV."""
    if cv == 1.0:
        while True:
            yield rng.expovariate(rate)
    shape = 1.0 / (cv * cv)
    while True:
        yield rng.gammavariate(shape, 1.0 / (rate * shape))


def financial_mix(num_tasks: int, load: float = 0.9, seed: int = 0, cv: float = 1.0,
                  mix: tuple[KindSpec, ...] = FINANCIAL_MIX,
                  cluster: tuple[PoolSpec, ...] = DEFAULT_CLUSTER) -> list[SimTask]:
    """``num_tasks`` tasks of ``mix`` arriving so that every pool runs at ``load``.

    ``cv`` is the coefficient of variation of inter-arrival times per kind: 1 is Poisson, above 1
    is bursty (gamma-distributed gaps).
    """
    rng = random.Random(seed)
    rates = arrival_rates(mix, cluster, load)
    total_rate = sum(rates.values())
    horizon_s = num_tasks / total_rate
    events: list[tuple[float, int, KindSpec]] = []
    for i, spec in enumerate(mix):
        t = 0.0
        for gap in _gaps(rng, rates[spec.kind], cv):
            t += gap
            if t >= horizon_s:
                break
            events.append((t, i, spec))
    events.sort(key=lambda e: (e[0], e[1]))
    return [_sim_task(spec, rng, f"{spec.kind[0]}{n}", t) for n, (t, _, spec) in
            enumerate(events[:num_tasks])]


def _sim_task(spec: KindSpec, rng: random.Random, task_id: str, t: float) -> SimTask:
    if spec.cpu_service_ms != (0.0, 0.0):
        core = CoreTask(task_id, spec.kind, spec.priority, t + spec.sla_ms / 1e3, spec.pool)
        return SimTask(t, core, cpu_service_s=rng.uniform(*spec.cpu_service_ms) / 1e3)
    prompt = rng.randint(*spec.prompt_tokens)
    core = CoreTask(task_id, spec.kind, spec.priority, t + spec.sla_ms / 1e3, spec.pool,
                    num_prompt_tokens=prompt, max_new_tokens=spec.max_new_tokens)
    return SimTask(t, core, true_new_tokens=rng.randint(*spec.true_new_tokens))


# -- Azure LLM inference trace --------------------------------------------------------------

TRACE_SLACK = {Priority.HIGH: 3.0, Priority.MEDIUM: 5.0, Priority.LOW: 10.0}
TRACE_SLACK_FLOOR_S = 0.5


def trace_rule(context_tokens: int, generated_tokens: int) -> tuple[Priority, str]:
    """How a trace request maps to a class and a pool (the trace names neither).

    - Class by answer length, as a proxy for how interactive it is: up to 64 generated tokens
      is HIGH (a chat reply someone waits for), up to 256 MEDIUM, longer LOW.
    - Pool: MEDIUM and LOW requests whose context fits Llama-2-70B's 4,096 tokens go to llm-70b
      (long answers, the bigger model); HIGH ones, and anything longer, go to llm-7b
      (32k context). "Fits" counts the token budget the scheduler sees (``token_budget``).
    - Deadline (in ``load_trace``): arrival + max(0.5 s, slack x the request's idle service time
      on its pool), slack 3 (HIGH), 5 (MEDIUM), 10 (LOW).
    """
    if generated_tokens <= 64:
        prio = Priority.HIGH
    elif generated_tokens <= 256:
        prio = Priority.MEDIUM
    else:
        prio = Priority.LOW
    fits_70b = context_tokens + token_budget(generated_tokens) <= 4_096
    pool = "llm-70b" if prio is not Priority.HIGH and fits_70b else "llm-7b"
    return prio, pool


def token_budget(generated_tokens: int) -> int:
    """The ``max_new_tokens`` a replayed request asks for: the next power of two above what it
    really generates, at most 1,000 (the trace's cap). Only the clairvoyant policy knows more."""
    return max(generated_tokens, min(1_000, 1 << max(0, math.ceil(math.log2(max(generated_tokens, 1))))))


def read_trace(path: str | Path, limit: int | None = None) -> list[tuple[float, int, int]]:
    """``(offset_s, context_tokens, generated_tokens)`` rows of an Azure trace CSV."""
    rows: list[tuple[float, int, int]] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        t0 = None
        for row in reader:
            ts = datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp()
            t0 = ts if t0 is None else t0
            rows.append((ts - t0, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def trace_load(rows: list[tuple[float, int, int]], cluster: tuple[PoolSpec, ...]) -> float:
    """Utilisation of the busiest pool if the trace is replayed in real time."""
    pools = {p.name: p for p in cluster}
    span_s = max(rows[-1][0], 1e-9)
    work: dict[str, float] = {}
    for _, ctx, gen in rows:
        _, pool = trace_rule(ctx, gen)
        work[pool] = work.get(pool, 0.0) + work_s(pools[pool], ctx, gen)
    return max(w / span_s / pools[name].count for name, w in work.items())


def load_trace(path: str | Path, load: float | None = None, compress: float = 1.0,
               limit: int | None = None, cluster: tuple[PoolSpec, ...] = DEFAULT_CLUSTER
               ) -> tuple[list[SimTask], float]:
    """Replay a trace; returns the tasks and the time compression used.

    With ``load`` the compression is chosen so that the busiest pool runs at that utilisation;
    otherwise ``compress`` divides every arrival offset.
    """
    rows = read_trace(path, limit)
    if load is not None:
        compress = load / trace_load(rows, cluster)
    pools = {p.name: p for p in cluster}
    tasks = []
    for n, (t, ctx, gen) in enumerate(rows):
        prio, pool = trace_rule(ctx, gen)
        p = pools[pool]
        idle_s = SimLLMWorker("probe", p.preset, p.max_batch_size).prior.service_s(ctx, gen, 1)
        at = t / compress
        deadline = at + max(TRACE_SLACK_FLOOR_S, TRACE_SLACK[prio] * idle_s)
        core = CoreTask(f"az{n}", "trace", prio, deadline, pool, num_prompt_tokens=ctx,
                        max_new_tokens=token_budget(gen))
        tasks.append(SimTask(at, core, true_new_tokens=gen))
    return tasks, compress
