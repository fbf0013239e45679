"""Scheduling policies by name: an ordering, a placement, and whether deadlines are enforced.

Every policy drives the same ``SchedulerCore``, so a comparison changes one thing at a time.

| policy        | queue order            | placement                     | binding | deadlines      |
|---------------|------------------------|-------------------------------|---------|----------------|
| fifo          | arrival                | first free worker             | late    | ignored        |
| round_robin   | arrival                | next worker in turn           | early   | ignored        |
| least_loaded  | arrival                | least backlog per concurrency  | early   | ignored        |
| pow2          | arrival                | power of two choices          | late    | ignored        |
| priority      | class, then arrival    | least backlog                 | late    | ignored        |
| edf           | deadline               | least backlog                 | late    | admit + expire |
| raysched      | class, deadline, aging | least learned finish          | late    | admit + expire |
| clairvoyant   | as raysched            | least true finish (an oracle) | late    | admit + expire |

"Late" binding keeps tasks in the central queue until a worker has a free slot; "early" binds at
arrival and lets the task wait in the worker's own queue, as a plain load balancer does. ``pow2``
is Ray Serve's router: it holds requests while every replica is at ``max_ongoing_requests``
(our slots) and then picks the shorter of two random replicas.
"""

from __future__ import annotations

from dataclasses import dataclass

from raysched.core.adaptive import AdaptiveEstimator, AdaptivePlacement
from raysched.core.placement import LeastCompletionTime, Placement, ServiceEstimator, make_placement
from raysched.core.scheduler import CoreConfig, SchedulerCore


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    ordering: str
    placement: str
    admission: bool = False
    aging: bool = False
    early_binding: bool = False
    needs_oracle: bool = False


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("fifo", "arrival", "first_free"),
    Policy("round_robin", "arrival", "round_robin", early_binding=True),
    Policy("least_loaded", "arrival", "least_loaded", early_binding=True),
    Policy("pow2", "arrival", "pow2"),
    Policy("priority", "class_arrival", "least_loaded"),
    Policy("edf", "deadline", "least_loaded", admission=True),
    Policy("raysched", "class_deadline", "adaptive", admission=True, aging=True),
    Policy("clairvoyant", "class_deadline", "least_completion", admission=True, aging=True,
           needs_oracle=True),
)}


def build_core(policy: str, *, seed: int = 0, aging_s: float | None = 30.0, max_attempts: int = 3,
               max_queued_per_class: int = 250_000, max_queued_per_pool: int = 500_000,
               max_queued_per_tenant: int = 100_000, oracle: ServiceEstimator | None = None,
               estimator: AdaptiveEstimator | None = None) -> SchedulerCore:
    """A ``SchedulerCore`` running ``policy``.

    ``oracle`` is the true service-time model the ``clairvoyant`` policy needs; ``estimator`` is
    the learned model ``raysched`` starts from (a restored one, say).
    """
    try:
        p = POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown policy {policy!r}; known: {sorted(POLICIES)}") from None
    placement: Placement
    if p.needs_oracle:
        if oracle is None:
            raise ValueError(f"policy {policy!r} needs an oracle of true service times")
        placement = LeastCompletionTime(oracle)
    elif p.placement == "adaptive":
        placement = AdaptivePlacement(estimator, seed=seed)
    elif p.placement == "least_completion":
        placement = LeastCompletionTime()
    elif p.placement == "pow2":
        placement = make_placement("pow2", seed=seed)
    else:
        placement = make_placement(p.placement)
    config = CoreConfig(aging_s=aging_s if p.aging else None, max_attempts=max_attempts,
                        max_queued_per_class=max_queued_per_class,
                        max_queued_per_pool=max_queued_per_pool,
                        max_queued_per_tenant=max_queued_per_tenant, ordering=p.ordering,
                        admission=p.admission, early_binding=p.early_binding)
    return SchedulerCore(config, placement)
