"""Chaos: thousands of mixed tasks while workers die, a node goes away and the scheduler restarts.

    python benchmarks/chaos.py [--tasks N] [--json PATH]

An in-machine ``ray.cluster_utils.Cluster`` of a head and three worker nodes (all 127.0.0.1);
every worker node carries CPU and 7B capacity, more than the pools need, so replacements have
somewhere to go. Tasks (CRITICAL fraud scoring, HIGH 7B summaries on the simulated engine at 10x
speed, LOW CPU callables) arrive steadily while the run plays its drills:

- a random worker killed every few seconds (through the scheduler's drill hook);
- a replacement killed while it starts, before it registers;
- an idle-looking worker killed behind the scheduler's back (``ray.kill``), found by the
  health check rather than by the next task sent to it;
- a poison task (a callable that never returns) among the CPU work: it must end ``failed``
  in quarantine, and no healthy task may fail on its account;
- one node removed, the scheduler actor restarted once, and a few tasks cancelled;
- then, in a process of its own, an embedded scheduler (``raysched.connect()`` with no
  address) killed with restart allowed while its tasks run.

Then it counts: every submitted task must come back exactly once as completed, failed,
rejected, expired or cancelled; ``lost`` (no result) and ``duplicated`` (a second result for
a task) must be zero, and so must ``healthy_failed``. For each kill it reports how long the
pool took to be back to full size. Prints tables and writes the JSON (keys: submitted,
completed, failed, rejected, expired, cancelled, lost, duplicated, healthy_failed, faults,
embedded, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

BIN_S = 0.5


def low_work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def poison() -> None:
    """A callable that never returns: it hangs whatever worker runs it."""
    while True:
        time.sleep(3600)


POISON_ID = "poison"
# How often the run looks at the pools to time their recovery.
WATCH_PERIOD_S = 0.2


def make_tasks(n: int, seed: int) -> list[Any]:
    from raysched import Task

    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        r = rng.random()
        if r < 0.6:
            tasks.append(Task(id=f"c{i}", kind="classification", priority="CRITICAL", sla_ms=250,
                              payload={"features": [rng.gauss(0, 1) for _ in range(8)]}))
        elif r < 0.85:
            tasks.append(Task(id=f"s{i}", kind="summarization", priority="HIGH", sla_ms=3_000,
                              payload={"prompt": "x" * rng.randint(400, 2000),
                                       "max_new_tokens": rng.randint(16, 64)}))
        else:
            tasks.append(Task(id=f"l{i}", kind="batch", priority="LOW", sla_ms=60_000,
                              payload={"fn": low_work, "args": (rng.uniform(0.001, 0.01),)}))
    return tasks


def recovery_s(bins: list[int], fault_s: float, start_s: float) -> float | None:
    """Seconds after ``fault_s`` until completions per bin are back to 80% of the median rate of
    the five seconds before it."""
    i0 = int((fault_s - start_s) / BIN_S)
    before = sorted(bins[max(0, i0 - int(5 / BIN_S)):i0])
    if not before:
        return None
    target = 0.8 * before[len(before) // 2]
    for i in range(i0, len(bins)):
        if bins[i] >= target:
            return (i - i0) * BIN_S
    return None


def run(n_tasks: int, seed: int = 0, rate_per_s: float = 250.0) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    import raysched
    from raysched import PoolConfig, SchedulerConfig, Status, Task

    rng = random.Random(seed)
    mb = 1024 * 1024
    recoveries: dict[int, float] = {}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80 * mb, "node_ip_address": "127.0.0.1"})
    nodes = [cluster.add_node(num_cpus=2, resources={"cpu_pool": 3, "llm_7b": 1},
                              object_store_memory=80 * mb, node_ip_address="127.0.0.1")
             for _ in range(3)]
    cluster.wait_for_nodes()
    try:
        config = SchedulerConfig(name="chaos", hang_grace_s=3.0, health_check_s=0.5, pools=[
            PoolConfig(name="cpu", kind="cpu", replicas=4, num_cpus=0.25,
                       cluster_resource="cpu_pool"),
            PoolConfig(name="llm-7b", kind="llm", model="7b", replicas=2, max_batch_size=16,
                       num_cpus=0.25, cluster_resource="llm_7b", time_scale=0.1),
        ])
        client = raysched.connect(address=cluster.address, config=config)
        tasks = make_tasks(n_tasks, seed)
        # The poison task takes an early place among the CPU work.
        tasks[min(len(tasks) - 1, 50)] = Task(id=POISON_ID, kind="batch", priority="LOW",
                                              sla_ms=600_000, payload={"fn": poison})
        by_id = {t.id: t for t in tasks}
        faults: list[tuple[float, str, str]] = []  # (at, what, pool)
        handles = []
        start = time.monotonic()
        next_kill = start + 2.0
        next_watch = start
        node_removed = restarted = False
        drills = ["replacement", "behind"]  # played at the first kills, then random kills
        i = 0
        while i < len(tasks):
            now = time.monotonic()
            due = int((now - start) * rate_per_s) - i
            if due > 0:
                handles.extend(client.submit_many(tasks[i:i + due]))
                i += due
            if rng.random() < 0.02 and handles:  # the newest task: most likely still queued
                client.cancel([handles[-1].task_id])
            if now >= next_kill:
                workers = client.stats()["workers"]
                if workers:
                    victim = rng.choice(sorted(workers))
                    pool = workers[victim]["pool"]
                    drill = drills.pop(0) if drills else "kill"
                    if drill == "behind":
                        # Behind the scheduler's back: only its health check can notice.
                        with contextlib.suppress(ValueError):
                            ray.kill(ray.get_actor(f"raysched-worker-{victim}",
                                                   namespace="raysched"))
                            faults.append((now, f"killed worker {victim} behind the "
                                                f"scheduler's back", pool))
                    elif ray.get(client.actor.kill_worker.remote(victim)):
                        faults.append((now, f"killed worker {victim}", pool))
                        if drill == "replacement":
                            what = _kill_replacement(ray, client, set(workers))
                            if what:
                                faults.append((time.monotonic(), what, pool))
                # The drills come early, so even a short run plays them all.
                next_kill = now + (1.5 if drills else rng.uniform(2.0, 4.0))
            if now >= next_watch:
                _watch_recovery(client, faults, recoveries, start)
                next_watch = now + WATCH_PERIOD_S
            elapsed = now - start
            if not node_removed and elapsed > 0.4 * len(tasks) / rate_per_s:
                cluster.remove_node(nodes[-1])
                faults.append((time.monotonic(), "removed a node", ""))
                node_removed = True
            if not restarted and elapsed > 0.7 * len(tasks) / rate_per_s:
                ray.kill(client.actor, no_restart=False)
                faults.append((time.monotonic(), "restarted the scheduler", ""))
                restarted = True
            time.sleep(0.01)
        # Kills late in the run: keep timing their pools' recovery for a while.
        watch_until = time.monotonic() + 20.0
        while (_watch_recovery(client, faults, recoveries, start)
               and time.monotonic() < watch_until):
            time.sleep(WATCH_PERIOD_S)
        results, received = _collect(handles)
        end = time.monotonic()
        counts = Counter(r.status.value for r, _ in results.values())
        failed_reasons = Counter(r.reason.split(" (")[0][:80] for r, _ in results.values()
                                 if r.status is Status.FAILED)
        crit = [r for r, _ in results.values() if by_id[r.task_id].priority.name == "CRITICAL"]
        poison_result = results.get(POISON_ID, (None, None))[0]
        bins = [0] * (int((end - start) / BIN_S) + 1)
        for r, t_done in results.values():
            if r.status is Status.COMPLETED:
                bins[min(len(bins) - 1, int((t_done - start) / BIN_S))] += 1
        out = {
            "submitted": len(tasks),
            **{s.value: counts.get(s.value, 0) for s in Status},
            "lost": len(tasks) - len(results),
            # A second Result reaching the driver for one task. Results the scheduler sent again
            # after its restart and the client dropped as already received are counted apart.
            "duplicated": sum(c - 1 for c in received.values()),
            "redelivered_and_dropped": client.duplicates_dropped,
            "failed_reasons": dict(failed_reasons),
            # Tasks that did nothing wrong and still failed: none may, poison or not.
            "healthy_failed": sum(1 for r, _ in results.values()
                                  if r.status is Status.FAILED and r.task_id != POISON_ID),
            "poison": {"status": poison_result.status.value if poison_result else "lost",
                       "reason": poison_result.reason if poison_result else "",
                       "attempts": poison_result.attempts if poison_result else 0},
            "critical_deadline_met": sum(r.deadline_met for r in crit) / max(1, len(crit)),
            "faults": [{"at_s": round(t - start, 2), "what": what, "pool": pool,
                        "recovery_s": recovery_s(bins, t, start),
                        "pool_full_s": recoveries.get(k)}
                       for k, (t, what, pool) in enumerate(faults)],
            "retried": sum(1 for r, _ in results.values() if r.attempts > 1),
            "duration_s": end - start,
            "scheduler_notes": client.stats()["notes"],
        }
        client.close()
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()


def _collect(handles: list[Any]) -> tuple[dict[str, tuple[Any, float | None]], Counter[str]]:
    """Every handle's Result with the moment it arrived (task id -> (Result, resolved_at)),
    and how many Results arrived per task id; a task with none in 180 s is left out (lost)."""
    import raysched

    results: dict[str, tuple[Any, float | None]] = {}
    received: Counter[str] = Counter()
    for h in handles:
        try:
            r = h.result(timeout=180)
        except raysched.TaskTimeoutError:
            continue
        received[r.task_id] += 1
        results[r.task_id] = (r, h.resolved_at)
    return results, received


def _kill_replacement(ray: Any, client: Any, before: set[str]) -> str:
    """Kill the next worker the scheduler starts before it registers; what was done, or ""."""
    give_up = time.monotonic() + 5.0
    while time.monotonic() < give_up:
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"]
            if not name.startswith("raysched-worker-"):
                continue
            worker_id = name.removeprefix("raysched-worker-")
            if worker_id in before or worker_id in client.stats()["workers"]:
                continue
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(name, namespace=entry["namespace"]))
                return f"killed replacement {worker_id} while it started"
        time.sleep(0.005)
    return ""


def _watch_recovery(client: Any, faults: list[tuple[float, str, str]],
                    recoveries: dict[int, float], start: float) -> int:
    """For each kill not yet recovered: is its pool back to its wanted size? Record when.
    Returns how many kills are still waiting for their pool to be full again."""
    open_faults = [k for k, (_, what, pool) in enumerate(faults)
                   if pool and "killed" in what and k not in recoveries]
    if not open_faults:
        return 0
    try:
        supervision = client.stats()["supervision"]
    except Exception:  # noqa: BLE001 - the scheduler may be restarting: look again later
        return len(open_faults)
    now = time.monotonic()
    for k in open_faults:
        at, _, pool = faults[k]
        h = supervision.get(pool)
        if h is not None and h["live"] >= h["wanted"] and now - at > WATCH_PERIOD_S:
            recoveries[k] = round(now - at, 2)
    return sum(1 for k in open_faults if k not in recoveries)


def embedded_drill(n_tasks: int) -> dict[str, Any]:
    """An embedded scheduler (its own local Ray, in this process) killed with restart allowed
    while ``n_tasks`` run: every task must still end exactly once."""
    import ray

    import raysched
    from raysched import PoolConfig, SchedulerConfig, Task

    client = raysched.connect(config=SchedulerConfig(pools=[
        PoolConfig(name="cpu", kind="cpu", replicas=2, num_cpus=0.5)]), num_cpus=2)
    tasks = [Task(id=f"e{i}", kind="batch", priority="MEDIUM", sla_ms=120_000,
                  payload={"fn": low_work, "args": (0.005,)}) for i in range(n_tasks)]
    handles = client.submit_many(tasks)
    time.sleep(0.3)
    killed = time.monotonic()
    ray.kill(client.actor, no_restart=False)
    results, received = _collect(handles)
    statuses = Counter(r.status.value for r, _ in results.values())
    back_s = time.monotonic() - killed
    later = client.submit(Task(kind="batch", sla_ms=60_000,
                               payload={"fn": low_work, "args": (0.001,)}))
    out = {"submitted": n_tasks, "statuses": dict(statuses),
           "lost": n_tasks - len(received), "duplicated": sum(c - 1 for c in received.values()),
           "all_results_s": round(back_s, 2),
           "after_restart": later.result(timeout=60).status.value}
    client.close()
    return out


def _run_embedded(n_tasks: int) -> dict[str, Any]:
    """``embedded_drill`` in a process of its own, with a Ray temp dir of its own."""
    import subprocess
    import tempfile

    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rs-chaos-", dir="/tmp")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, __file__, "--embedded-only", "--tasks", str(n_tasks)],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"submitted": n_tasks, "lost": n_tasks, "duplicated": 0,
                "error": proc.stderr[-2000:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=250.0, help="submissions per second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="out/chaos.json")
    ap.add_argument("--embedded-tasks", type=int, default=300,
                    help="tasks of the embedded-scheduler drill (0: skip it)")
    ap.add_argument("--embedded-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.embedded_only:
        print(json.dumps(embedded_drill(args.tasks)))
        return 0
    out = run(args.tasks, args.seed, args.rate)
    out["embedded"] = (_run_embedded(args.embedded_tasks) if args.embedded_tasks
                       else {"submitted": 0, "lost": 0, "duplicated": 0})
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"chaos: {out['submitted']} tasks, 3 worker nodes, {len(out['faults'])} faults")
    keys = ("submitted", "completed", "failed", "rejected", "expired", "cancelled", "lost",
            "duplicated")
    for k in keys:
        t.add_column(k, justify="right")
    t.add_row(*[str(out[k]) for k in keys])
    console = Console(width=160)
    console.print(t)
    f = Table(title=f"faults (CRITICAL deadline met during the run: "
                    f"{100 * out['critical_deadline_met']:.2f}%)")
    for col in ("at s", "fault", "throughput back in s", "pool full again in s"):
        f.add_column(col, justify="right")
    for fault in out["faults"]:
        rec, full = fault["recovery_s"], fault["pool_full_s"]
        f.add_row(f"{fault['at_s']:.1f}", fault["what"], "-" if rec is None else f"{rec:.1f}",
                  "-" if full is None else f"{full:.1f}")
    console.print(f)
    console.print(f"failed reasons: {out['failed_reasons']}; retried tasks: {out['retried']}; "
                  f"healthy tasks failed: {out['healthy_failed']}; poison task: "
                  f"{out['poison']['status']} after {out['poison']['attempts']} attempts")
    emb = out["embedded"]
    console.print(f"embedded scheduler killed: {emb.get('statuses')}, lost {emb['lost']}, "
                  f"duplicated {emb['duplicated']}, all results {emb.get('all_results_s')} s "
                  f"after the kill, a task after the restart: {emb.get('after_restart')}")
    total = sum(out[k] for k in ("completed", "failed", "rejected", "expired", "cancelled"))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}; accounted {total} of {out['submitted']}")
    ok = (out["lost"] == 0 and out["duplicated"] == 0 and total == out["submitted"]
          and out["healthy_failed"] == 0 and out["poison"]["status"] == "failed"
          and emb["lost"] == 0 and emb["duplicated"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
