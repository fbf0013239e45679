"""Adaptive placement on a pool of unequal workers, and after one of them slows down.

One llm-7b pool of three workers that run at 1x, 1.5x and 3x the speed of the engine prior
(service time x1, x1/1.5, x1/3; the scheduler is not told), serving summaries (HIGH, 2 s
deadline) at 70% of the pool's true capacity. Halfway through, the 1.5x worker slows down 3x
(to half the prior's speed); the pool keeps enough capacity for the load (86% after), so the run
measures how placement adapts, not how an overloaded pool degrades (``--drift-worker 2`` slows
the fastest one instead, which overloads the pool).
Policies: ``raysched`` (learned placement), ``least_loaded``, ``pow2`` and ``oracle_lct``
(knows the true speeds and output lengths at every moment).

    python benchmarks/adaptive.py --mode sim --out DIR [--tasks N] [--seeds 0,1,2]
    python benchmarks/adaptive.py --mode ray --out DIR [--tasks N] [--time-scale 0.5]

writes ``DIR/results.json`` with, per policy: ``mean_ms`` (completions 200 up to the drift),
``p99_ms``, ``deadline_met``, ``recover_completions`` (completions after the drift until the
rolling mean latency is back within 10% of ``oracle_lct``'s), and ``DIR/rolling_latency.png``.

In ``--mode ray`` the same tasks go through the real scheduler actor and three simulated-engine
LLM actors whose speeds are set behind the scheduler's back (``set_worker_speed``), time
compressed by ``--time-scale``; ``oracle_lct`` needs an oracle, so its numbers (and the
reference for ``recover_completions``) come from the simulator on the same tasks.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

from raysched.bench.report import machine
from raysched.bench.workloads import PoolSpec, work_s
from raysched.core.policies import POLICIES, build_core
from raysched.core.types import CoreTask, Priority
from raysched.sim import Oracle, SimTask, Simulator

SPEEDUPS = (1.0, 1.5, 3.0)  # relative to the prior
DRIFT_SLOWDOWN = 3.0
POLICY_NAMES = ("raysched", "least_loaded", "pow2", "oracle_lct")
WARMUP = 200
WINDOW = 50
DEADLINE_S = 2.0


def workload(n: int, seed: int, load: float) -> list[SimTask]:
    rng = random.Random(seed)
    pool = PoolSpec("llm-7b", 1, "7b", 16)
    mean_work_s = work_s(pool, 500, 40)
    rate = load * sum(SPEEDUPS) / mean_work_s
    t = 0.0
    tasks = []
    for i in range(n):
        t += rng.expovariate(rate)
        core = CoreTask(f"s{i}", "summarization", Priority.HIGH, t + DEADLINE_S, "llm-7b",
                        num_prompt_tokens=rng.randint(200, 800), max_new_tokens=64)
        tasks.append(SimTask(t, core, true_new_tokens=rng.randint(16, 64)))
    return tasks


def run_policy(policy: str, tasks: list[SimTask], seed: int, drift_worker: int = 1
               ) -> dict[str, Any]:
    pool = PoolSpec("llm-7b", len(SPEEDUPS), "7b", 16, speeds=tuple(1 / s for s in SPEEDUPS))
    oracle = Oracle() if POLICIES[policy].needs_oracle else None
    core = build_core(policy, seed=seed, oracle=oracle)
    sim = Simulator(core, {wid: ("llm-7b", w) for wid, w in pool.build()})
    if oracle is not None:
        oracle.bind(sim)
    drift_s = tasks[len(tasks) // 2].arrival_s
    run = sim.run(tasks, speed_changes=[(drift_s, f"llm-7b-{drift_worker}",
                                         DRIFT_SLOWDOWN / SPEEDUPS[drift_worker])])
    done = sorted((o for o in run.outcomes if o.status.value == "completed"),
                  key=lambda o: o.end_s)
    lat_ms = np.array([(o.end_s - o.submit_s) * 1e3 for o in done])
    drift_idx = int(np.searchsorted([o.end_s for o in done], drift_s))
    share = {}
    for phase, sel in (("before", done[WARMUP:drift_idx]), ("after", done[drift_idx:])):
        counts: dict[str, int] = {}
        for o in sel:
            counts[o.worker_id] = counts.get(o.worker_id, 0) + 1
        share[phase] = {w: c / max(1, len(sel)) for w, c in sorted(counts.items())}
    return {
        "policy": policy,
        "mean_ms": float(lat_ms[WARMUP:drift_idx].mean()),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "deadline_met": float(np.mean([o.deadline_met for o in run.outcomes])),
        "drift_completion": drift_idx,
        "rolling_ms": rolling(lat_ms).tolist(),
        "share": share,
    }


def _entry(policy: str, done: list[tuple[float, float, str]], met: list[bool], drift_at: float
           ) -> dict[str, Any]:
    """Summary of one run from (end time, latency ms, worker) per completed task."""
    done.sort()
    lat_ms = np.array([d[1] for d in done])
    drift_idx = int(np.searchsorted([d[0] for d in done], drift_at))
    share = {}
    for phase, sel in (("before", done[WARMUP:drift_idx]), ("after", done[drift_idx:])):
        counts: dict[str, int] = {}
        for d in sel:
            counts[d[2]] = counts.get(d[2], 0) + 1
        share[phase] = {w: c / max(1, len(sel)) for w, c in sorted(counts.items())}
    return {"policy": policy, "mean_ms": float(lat_ms[WARMUP:drift_idx].mean()),
            "p99_ms": float(np.percentile(lat_ms, 99)), "deadline_met": float(np.mean(met)),
            "drift_completion": drift_idx, "rolling_ms": rolling(lat_ms).tolist(), "share": share}


def run_ray(tasks: list[SimTask], seed: int, drift_worker: int, time_scale: float
            ) -> dict[str, dict[str, Any]]:
    """raysched, least_loaded and pow2 on Ray; oracle_lct from the simulator."""
    import threading

    import ray

    import raysched
    from raysched._ray import init_local
    from raysched.bench.replay import plan_of, replay

    if not ray.is_initialized():
        init_local(num_cpus=16)
    runs = {"oracle_lct": run_policy("oracle_lct", tasks, seed, drift_worker)}
    drift_s = tasks[len(tasks) // 2].arrival_s * time_scale
    for policy in ("raysched", "least_loaded", "pow2"):
        config = raysched.SchedulerConfig(name=f"adaptive-{policy}-{seed}", policy=policy, pools=[
            raysched.PoolConfig(name="llm-7b", kind="llm", engine="sim", model="7b",
                                replicas=len(SPEEDUPS), max_batch_size=16, num_cpus=0.1,
                                time_scale=time_scale)])
        client = raysched.connect(config=config)
        workers = sorted(client.stats()["workers"], key=lambda w: int(w.rsplit("-", 1)[1]))
        name = {w: f"llm-7b-{i}" for i, w in enumerate(workers)}
        for w, speedup in zip(workers, SPEEDUPS, strict=True):
            ray.get(client.actor.set_worker_speed.remote(w, 1 / speedup))
        plan = plan_of(tasks, time_scale)
        # Started just before the replay's offset 0, so the drift lands at its offset.
        slowed, speed = workers[drift_worker], DRIFT_SLOWDOWN / SPEEDUPS[drift_worker]
        drift = threading.Timer(drift_s, lambda actor=client.actor, w=slowed, v=speed: ray.get(
            actor.set_worker_speed.remote(w, v)))
        drift.start()
        run = replay(client, plan, wait_s=600.0)
        drift.join()
        if run.lost:
            raise RuntimeError(f"{policy}: {run.lost} of {run.submitted} tasks had no Result")
        done = [((h.resolved_at - run.start_s) / time_scale, r.total_s / time_scale * 1e3,
                 name.get(r.worker_id, r.worker_id)) for h, r in run.received if r.ok]
        runs[policy] = _entry(policy, done, [r.deadline_met for r in run.results],
                              drift_s / time_scale)
        client.close()
        ray.kill(client.actor)
    return runs


def rolling(x: np.ndarray, window: int = WINDOW) -> np.ndarray:
    c = np.cumsum(np.insert(x, 0, 0.0))
    out = np.empty_like(x)
    for i in range(len(x)):
        lo = max(0, i - window + 1)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def recover_completions(entry: dict[str, Any], reference: dict[str, Any]) -> int | None:
    """Completions after the drift until the rolling mean is within 10% of the reference."""
    mine = np.asarray(entry["rolling_ms"])
    ref = np.asarray(reference["rolling_ms"])
    start = entry["drift_completion"]
    n = min(len(mine), len(ref))
    for i in range(start, n):
        if mine[i] <= 1.10 * ref[i]:
            return i - start
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["sim", "ray"], default="sim")
    ap.add_argument("--time-scale", type=float, default=0.5, help="ray mode: time compression")
    ap.add_argument("--out", default="out/adaptive")
    ap.add_argument("--tasks", type=int, default=6_000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--load", type=float, default=0.7)
    ap.add_argument("--drift-worker", type=int, default=1, choices=range(len(SPEEDUPS)),
                    help="which worker slows down (0: 1x, 1: 1.5x, 2: 3x)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    per_policy: dict[str, list[dict[str, Any]]] = {p: [] for p in POLICY_NAMES}
    for seed in seeds:
        tasks = workload(args.tasks, seed, args.load)
        if args.mode == "ray":
            runs = run_ray(tasks, seed, args.drift_worker, args.time_scale)
        else:
            runs = {p: run_policy(p, tasks, seed, args.drift_worker) for p in POLICY_NAMES}
        for p in POLICY_NAMES:
            runs[p]["recover_completions"] = recover_completions(runs[p], runs["oracle_lct"])
            runs[p]["seed"] = seed
            per_policy[p].append(runs[p])
    summary = []
    for p, rs in per_policy.items():
        rec = [r["recover_completions"] for r in rs]
        summary.append({
            "policy": p,
            "mean_ms": float(np.mean([r["mean_ms"] for r in rs])),
            "p99_ms": float(np.mean([r["p99_ms"] for r in rs])),
            "deadline_met": float(np.mean([r["deadline_met"] for r in rs])),
            "recover_completions": None if None in rec else float(np.mean(rec)),
            "recover_per_seed": rec,
            "share": rs[0]["share"],
        })
    clair = next(s for s in summary if s["policy"] == "oracle_lct")
    pow2 = next(s for s in summary if s["policy"] == "pow2")
    _print(summary, clair, pow2, args.mode)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"mode": args.mode, "tasks": args.tasks, "seeds": seeds, "load": args.load,
            "speedups": SPEEDUPS, "drift": f"llm-7b-{args.drift_worker} slows {DRIFT_SLOWDOWN}x "
            "when half the tasks have arrived", "machine": machine()}
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "policies": {s["policy"]: s for s in summary}}, indent=2))
    _plot(out, per_policy)
    print(f"wrote {out / 'results.json'}")
    return 0


def _print(summary: list[dict[str, Any]], clair: dict[str, Any], pow2: dict[str, Any],
           mode: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"adaptive placement, 1x / 1.5x / 3x workers, one slows 3x mid-run ({mode})")
    for col in ("policy", "mean ms", "vs oracle_lct", "p99 ms", "pow2 p99 / p99",
                "deadline met", "recover (completions)", "share after drift"):
        t.add_column(col, justify="right")
    for s in summary:
        share = " ".join(f"{v:.2f}" for v in s["share"]["after"].values())
        t.add_row(s["policy"], f"{s['mean_ms']:.0f}", f"{s['mean_ms'] / clair['mean_ms']:.3f}x",
                  f"{s['p99_ms']:.0f}", f"{pow2['p99_ms'] / s['p99_ms']:.2f}x",
                  f"{100 * s['deadline_met']:.2f}%",
                  "never" if s["recover_completions"] is None
                  else f"{s['recover_completions']:.0f}",
                  share)
    Console(width=180).print(t)


def _plot(out: Path, per_policy: dict[str, list[dict[str, Any]]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    for p, rs in per_policy.items():
        ax.plot(rs[0]["rolling_ms"], label=p, linewidth=1)
    ax.axvline(per_policy["oracle_lct"][0]["drift_completion"], color="k", linestyle="--",
               label="a worker slows 3x")
    ax.set_xlabel("completions")
    ax.set_ylabel(f"rolling mean latency, ms (window {WINDOW})")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rolling_latency.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
