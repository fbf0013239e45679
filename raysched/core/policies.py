"""Scheduling policies by name: an ordering, a placement, and whether deadlines are enforced.

Every policy drives the same ``SchedulerCore``, so a comparison changes one thing at a time.

| policy       | queue order            | placement                     | binding | deadlines      |
|--------------|------------------------|-------------------------------|---------|----------------|
| fifo         | arrival                | first free worker             | late    | ignored        |
| round_robin  | arrival                | next worker in turn           | early   | ignored        |
| least_loaded | arrival                | least backlog per concurrency | early   | ignored        |
| pow2         | arrival                | power of two choices          | late    | ignored        |
| pow2_priority| class, then arrival,   | power of two choices          | early   | ignored        |
|              | in each worker's queue |                               |         |                |
| priority     | class, then arrival    | least backlog                 | late    | ignored        |
| edf          | deadline               | least backlog                 | late    | admit + expire |
| raysched     | class, deadline, aging | least learned finish          | late    | admit, expire, |
|              | (tight work first)     |                               |         | preempt        |
| oracle_lct   | as raysched            | least true finish (an oracle) | late    | as raysched    |

``oracle_lct`` knows every task's true service time and places it greedily on the earliest
finish. It is a reference for placement, not an upper bound: greedy placement with perfect
knowledge can lose to a policy that keeps fast workers free or holds work back.

"Late" binding keeps tasks in the central queue until a worker has a free slot; "early" binds at
arrival and lets the task wait in the worker's own queue, as a plain load balancer does. ``pow2``
is Ray Serve's router: it holds requests while every replica is at ``max_ongoing_requests``
(our slots) and then picks the shorter of two random replicas.

``pow2_priority`` is what Ray Serve in front of vLLM replicas started with
``--scheduling-policy priority`` gives a user: each request is routed at arrival to the shorter
of two random replicas (early binding), and each replica runs its own waiting requests in
priority order, then arrival (vLLM's priority queue). Ordering inside a worker is the worker's
business, so the policy names it (``replica_order``) and the driver builds its workers with it
(the simulator's ``ReplicaQueue``); the core sees the same early binding as ``round_robin``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from raysched.core.adaptive import AdaptiveEstimator, AdaptivePlacement
from raysched.core.placement import (
    FirstFree,
    LeastCompletionTime,
    LeastLoaded,
    Placement,
    PowerOfTwo,
    RoundRobin,
    ServiceEstimator,
)
from raysched.core.scheduler import CoreConfig, SchedulerCore


@dataclass(frozen=True, slots=True)
class PlacementArgs:
    """What a placement may be built from: a seed for random choices, a learned model to
    start from, and (for the oracle reference only) the true service-time model."""

    seed: int = 0
    estimator: AdaptiveEstimator | None = None
    oracle: ServiceEstimator | None = None


PLACEMENTS: dict[str, Callable[[PlacementArgs], Placement]] = {
    "first_free": lambda a: FirstFree(),
    "round_robin": lambda a: RoundRobin(),
    "least_loaded": lambda a: LeastLoaded(),
    "pow2": lambda a: PowerOfTwo(seed=a.seed),
    "least_completion": lambda a: LeastCompletionTime(a.oracle),
    "adaptive": lambda a: AdaptivePlacement(a.estimator, seed=a.seed),
}


def make_placement(name: str, args: PlacementArgs | None = None) -> Placement:
    """The placement registered as ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        factory = PLACEMENTS[name]
    except KeyError:
        raise ValueError(f"unknown placement {name!r}; known: {sorted(PLACEMENTS)}") from None
    return factory(args or PlacementArgs())


@dataclass(frozen=True, slots=True)
class Policy:
    """A named scheduling policy: queue ``ordering``, ``placement`` (a ``PLACEMENTS`` name),
    whether it admits and expires by deadline, ages waiting work, binds early, and whether it
    needs an oracle of true service times (a reference, not a live policy).

    ``replica_order``: the order in which a worker runs the tasks bound to it that have not
    started (``"arrival"`` or ``"class_arrival"``); it matters only under early binding, where
    tasks wait at the worker, and the driver applies it when it builds its workers.
    """

    name: str
    ordering: str
    placement: str
    admission: bool = False
    aging: bool = False
    early_binding: bool = False
    needs_oracle: bool = False
    preemption: bool = False
    replica_order: str = "arrival"


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("fifo", "arrival", "first_free"),
    Policy("round_robin", "arrival", "round_robin", early_binding=True),
    Policy("least_loaded", "arrival", "least_loaded", early_binding=True),
    Policy("pow2", "arrival", "pow2"),
    Policy("pow2_priority", "class_arrival", "pow2", early_binding=True,
           replica_order="class_arrival"),
    Policy("priority", "class_arrival", "least_loaded"),
    Policy("edf", "deadline", "least_loaded", admission=True),
    Policy("raysched", "guarded_class", "adaptive", admission=True, aging=True,
           preemption=True),
    Policy("oracle_lct", "guarded_class", "least_completion", admission=True, aging=True,
           needs_oracle=True, preemption=True),
)}


def build_core(policy: str, *, config: CoreConfig | None = None, seed: int = 0,
               oracle: ServiceEstimator | None = None,
               estimator: AdaptiveEstimator | None = None,
               admission: bool | None = None) -> SchedulerCore:
    """A ``SchedulerCore`` running ``policy``.

    ``config`` gives the knobs (bounds, attempts, aging period; ``CoreConfig``'s defaults when
    None); the policy sets the ordering, admission, early binding, and whether aging is on.
    ``oracle`` is the true service-time model the ``oracle_lct`` policy needs; ``estimator`` is
    the learned model ``raysched`` starts from (a restored one, say). ``admission`` overrides
    the policy's admission and expiry (None: the policy's own); the benchmark's
    counterfactual replay turns it off to see which refused tasks would have made it. Raises
    ``ValueError`` for an unknown policy or a missing oracle.
    """
    try:
        p = POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; known: {sorted(POLICIES)}") from None
    if p.needs_oracle and oracle is None:
        raise ValueError(f"policy {policy!r} needs an oracle of true service times")
    base = config or CoreConfig()
    core_config = replace(base, aging_s=base.aging_s if p.aging else None, ordering=p.ordering,
                          admission=p.admission if admission is None else admission,
                          early_binding=p.early_binding,
                          preemption=p.preemption)
    placement = make_placement(p.placement, PlacementArgs(seed, estimator, oracle))
    return SchedulerCore(core_config, placement)
