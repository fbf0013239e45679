"""The financial mix: four kinds of work with their own priority class, deadline and size.

| kind           | class    | pool    | deadline | size                                    |
|----------------|----------|---------|----------|-----------------------------------------|
| classification | CRITICAL | cpu     | 50 ms    | 8 transaction features                  |
| summarization  | HIGH     | llm-7b  | 1.5 s    | 400-1,600 prompt tokens, 20-60 out      |
| reasoning      | MEDIUM   | llm-70b | 10 s     | 200-800 prompt tokens, 40-150 out       |
| agent          | LOW      | llm-7b  | 60 s     | 300-1,000 prompt tokens, 300-1,200 out  |

Arrivals are Poisson per kind. The generator is deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from raysched.core.types import CHARS_PER_TOKEN
from raysched.models import Task


@dataclass(frozen=True)
class KindSpec:
    kind: str
    priority: str
    sla_ms: float
    rate_per_s: float
    prompt_tokens: tuple[int, int] = (0, 0)
    new_tokens: tuple[int, int] = (0, 0)


FINANCIAL_MIX: tuple[KindSpec, ...] = (
    KindSpec("classification", "CRITICAL", 50.0, 40.0),
    KindSpec("summarization", "HIGH", 1_500.0, 4.0, (400, 1_600), (20, 60)),
    KindSpec("reasoning", "MEDIUM", 10_000.0, 1.0, (200, 800), (40, 150)),
    KindSpec("agent", "LOW", 60_000.0, 0.3, (300, 1_000), (300, 1_200)),
)


def make_task(spec: KindSpec, rng: random.Random, task_id: str) -> Task:
    if spec.kind == "classification":
        payload = {"features": [round(rng.gauss(0.0, 1.0), 3) for _ in range(8)]}
    else:
        n_prompt = rng.randint(*spec.prompt_tokens)
        payload = {"prompt": f"[{spec.kind}] " + "x" * (n_prompt * CHARS_PER_TOKEN),
                   "max_new_tokens": rng.randint(*spec.new_tokens)}
    return Task(id=task_id, kind=spec.kind, priority=spec.priority, sla_ms=spec.sla_ms,
                payload=payload)


def arrivals(duration_s: float, seed: int = 0, rate_scale: float = 1.0,
             mix: tuple[KindSpec, ...] = FINANCIAL_MIX) -> Iterator[tuple[float, Task]]:
    """``(offset_s, task)`` pairs in time order over ``duration_s`` seconds."""
    rng = random.Random(seed)
    events: list[tuple[float, int, KindSpec]] = []
    for i, spec in enumerate(mix):
        t = 0.0
        rate = spec.rate_per_s * rate_scale
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= duration_s:
                break
            events.append((t, i, spec))
    events.sort(key=lambda e: (e[0], e[1]))
    for n, (t, _, spec) in enumerate(events):
        yield t, make_task(spec, rng, f"{spec.kind[:4]}-{seed}-{n}")
