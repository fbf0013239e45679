"""``raysched bench``: run policies side by side on one workload, in simulation or on Ray."""

from __future__ import annotations

import argparse
import sys
from typing import Any

SIM_POLICIES = ("fifo", "round_robin", "least_loaded", "pow2", "pow2_priority", "priority",
                "edf", "raysched", "oracle_lct")


def main(args: argparse.Namespace) -> int:
    """Check the policies, build the cluster and the report's header, then run the mode."""
    from raysched.bench.report import machine
    from raysched.bench.workloads import DEFAULT_CLUSTER, scale_cluster
    from raysched.core.policies import POLICIES

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"unknown policies {unknown}; known: {sorted(POLICIES)}")
        return 2
    seeds = [int(s) for s in str(args.seeds).split(",")]
    if args.workload not in ("mix", "bursty"):
        from raysched.bench.workloads import TraceError, read_trace

        try:  # a bad trace is said before any run starts
            read_trace(args.workload, limit=args.tasks)
        except (OSError, TraceError) as e:
            print(f"raysched bench: {e}", file=sys.stderr)
            return 2
    cluster = scale_cluster(DEFAULT_CLUSTER, args.scale)
    meta: dict[str, Any] = {"mode": args.mode, "load": args.load, "seeds": seeds,
                            "cluster": {p.name: f"{p.count} x {p.preset}" +
                                        (f" (batch {p.max_batch_size})" if p.preset != "cpu"
                                         else "") for p in cluster},
                            "machine": machine()}
    if args.mode == "sim":
        from raysched.bench.sim_mode import main as sim_main

        return sim_main(args, policies, seeds, cluster, meta)
    from raysched.bench.ray_mode import main as ray_main

    return ray_main(args, policies, seeds, cluster, meta)


def add_parser(sub: Any) -> None:
    """Add the ``bench`` subcommand to the ``raysched`` command line's subparsers."""
    b = sub.add_parser("bench", help="compare scheduling policies on one workload")
    b.add_argument("--mode", choices=["sim", "ray"], default="sim")
    b.add_argument("--policies", default=",".join(SIM_POLICIES))
    b.add_argument("--workload", default="mix",
                   help="'mix', 'bursty' or the path of a request trace (Azure or BurstGPT "
                        "CSV, Mooncake JSON lines)")
    b.add_argument("--load", type=float, default=0.9, help="offered utilisation of every pool")
    b.add_argument("--tasks", type=int, default=20_000, help="tasks per run")
    b.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    b.add_argument("--cv", type=float, default=1.0, help="inter-arrival CV (1 = Poisson)")
    b.add_argument("--scale", type=int, default=1, help="multiply every pool's worker count")
    b.add_argument("--sweep", default="", help="loads for the deadline-met vs load plot")
    b.add_argument("--scheduler-cost", default="none",
                   help="sim mode: charge the scheduler its own work per task: 'none', "
                        "'reference' (figures measured on a 2-core machine) or the JSON of "
                        "benchmarks/overhead.py --parts cd on this machine")
    b.add_argument("--shards", type=int, default=1,
                   help="sim mode, with --scheduler-cost: scheduler shards sharing the load")
    b.add_argument("--out", default="out/bench")
    b.add_argument("--time-scale", type=float, default=1.0,
                   help="ray mode: run this much faster than real time")
    b.add_argument("--peer", default="", help="ray mode: also run a peer, e.g. ray-serve")
    b.add_argument("--nodes", default="", help="ray mode: node counts to try, e.g. 1,2,4")
    b.add_argument("--address", default=None, help="ray mode: an existing cluster")
    b.set_defaults(func=main)
