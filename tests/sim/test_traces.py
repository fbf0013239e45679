"""Request traces in the formats the field publishes: read the same, replayed to one end each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raysched.bench.sim_mode import run_sim
from raysched.bench.workloads import DEFAULT_CLUSTER, TraceError, load_trace, read_trace
from raysched.cli import main as cli_main

# Three requests, out of arrival order in the file: (offset s, prompt tokens, answer tokens).
# The third answered nothing, which BurstGPT logs for a failed request.
REQUESTS = [(2.5, 1_200, 40), (0.0, 300, 12), (1.25, 800, 0)]
EXPECTED = [(0.0, 300, 12), (1.25, 800, 1), (2.5, 1_200, 40)]


def azure(path: Path) -> Path:
    stamps = ["2024-05-10 00:00:02.500000+00:00", "2024-05-10 00:00:00+00:00",
              "2024-05-10 00:00:01.2500000+00:00"]  # Azure writes 7 fractional digits
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"{ts},{p},{a}" for ts, (_, p, a) in zip(stamps, REQUESTS, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def burstgpt(path: Path) -> Path:
    lines = ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"]
    lines += [f"{10 + t},ChatGPT,{p},{a},{p + a},Conversation log" for t, p, a in REQUESTS]
    path.write_text("\n".join(lines) + "\n")
    return path


def mooncake(path: Path) -> Path:
    path.write_text("".join(json.dumps({"timestamp": int(t * 1e3), "input_length": p,
                                        "output_length": a, "hash_ids": [0, 1]}) + "\n"
                            for t, p, a in REQUESTS))
    return path


@pytest.mark.parametrize("write", [azure, burstgpt, mooncake])
def test_each_published_format_reads_as_the_same_requests_in_arrival_order(tmp_path, write):
    path = write(tmp_path / f"trace.{'jsonl' if write is mooncake else 'csv'}")
    assert read_trace(path) == EXPECTED
    assert read_trace(path, limit=2) == [(0.0, 300, 12), (2.5, 1_200, 40)]  # the file's first


@pytest.mark.parametrize("text, says", [
    ("a,b\n1,2\n", "no known trace columns"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
    ("Timestamp,Request tokens,Response tokens\n1,10,5\n2,-3,5\n", ":3: bad row"),
    ("Timestamp,Request tokens,Response tokens\n1,10,5\nsoon,10,5\n", ":3: bad row"),
    ("Timestamp,Request tokens,Response tokens\n1,10.5,5\n", "not a token count"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{"timestamp": 1,\n', ":2:"),
])
def test_a_trace_that_is_not_requests_is_refused_naming_the_line(tmp_path, text, says):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=says):
        read_trace(path)


def test_bench_says_what_is_wrong_with_a_trace_before_running(tmp_path, capsys):
    path = tmp_path / "trace.csv"
    path.write_text("a,b\n1,2\n")
    for workload in (path, tmp_path / "missing.csv"):
        code = cli_main(["bench", "--mode", "sim", "--workload", str(workload),
                         "--out", str(tmp_path / "out")])
        assert code == 2
        assert str(workload) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_replayed_request_ends_once_with_a_prompt_no_pool_holds(tmp_path):
    """A Mooncake-sized prompt beyond every pool's context is refused with its reason; the
    rest run."""
    path = tmp_path / "trace.jsonl"
    sizes = [(300, 12), (200_000, 20), (1_500, 80), (2_000, 400)]
    path.write_text("".join(json.dumps({"timestamp": 250 * n, "input_length": p,
                                        "output_length": a}) + "\n"
                            for n, (p, a) in enumerate(sizes)))
    tasks, _ = load_trace(path, load=0.5)
    for policy in ("edf", "raysched"):
        entry, records = run_sim(policy, tasks, DEFAULT_CLUSTER)
        assert sorted(r.task_id for r in records) == sorted(t.task.task_id for t in tasks)
        status = {r.task_id: r.status for r in records}
        assert status.pop(tasks[1].task.task_id) == "rejected"
        assert set(status.values()) == {"completed"}
