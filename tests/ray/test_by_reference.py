"""Large payloads and outputs go through Ray's object store by reference, on a real local Ray:
the scheduler passes refs on and counts them, the driver gets the values."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from raysched import Status, Task
from raysched.core.protocol import INLINE_PAYLOAD_BYTES

pytestmark = pytest.mark.ray

# Ray workers cannot import this test module: ship its callables by value.
from ray import cloudpickle  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

BIG_BYTES = 4 * INLINE_PAYLOAD_BYTES


def _checksum_and_echo(data: np.ndarray, n: int) -> np.ndarray:
    """An output as large as the input, whose content proves the input arrived whole."""
    return np.full(n, float(data.sum()))


def _small(x: int) -> int:
    return x + 1


def test_large_payloads_and_outputs_go_by_reference_and_arrive_whole(make_client) -> None:
    client = make_client()
    data = np.arange(BIG_BYTES // 8, dtype=np.float64)
    n_out = BIG_BYTES // 8
    prompt = "word " * (INLINE_PAYLOAD_BYTES // 5 + 1000)  # over the limit, within the context
    tasks = [
        Task(id="array", kind="job", priority="HIGH", sla_ms=60_000,
             payload={"fn": _checksum_and_echo, "args": (data, n_out)},
             requirements={"pool": "cpu"}),
        Task(id="small", kind="job", priority="HIGH", sla_ms=60_000,
             payload={"fn": _small, "args": (1,)}, requirements={"pool": "cpu"}),
        Task(id="prompt", kind="summarization", priority="MEDIUM", sla_ms=120_000,
             payload={"prompt": prompt, "max_new_tokens": 4}),
    ]
    results = {r.task_id: r for r in client.map(tasks, timeout=120)}
    assert {tid: r.status for tid, r in results.items()} == dict.fromkeys(
        ("array", "small", "prompt"), Status.COMPLETED), results
    out = results["array"].output
    assert isinstance(out, np.ndarray) and out.shape == (n_out,)
    assert out[0] == data.sum() and out[-1] == data.sum()
    assert results["small"].output == 2
    counted = client.stats()["by_reference"]
    # The array's payload and the long prompt went by reference; so did the array's output.
    assert counted["payloads"] == 2 and counted["payload_bytes"] >= BIG_BYTES + len(prompt)
    # A callable's output is counted as pickled (the array's bytes and pickle's own, a little).
    assert counted["outputs"] == 1 and BIG_BYTES <= counted["output_bytes"] < BIG_BYTES + 1024


def _fetch_plus_one(ref) -> int:
    import ray

    return ray.get(ref) + 1


def _fetch_all_plus_one(refs) -> list[int]:
    import ray

    return [v + 1 for v in ray.get(refs)]


def test_an_object_ref_among_a_callables_arguments_reaches_its_worker(make_client) -> None:
    # An argument that is a ref travels through Ray's own serialization (counted, not pinned
    # out of band); the callable fetches the value itself: the task's arguments are inside
    # its record, where Ray resolves no ref.
    import ray

    client = make_client()
    ref = ray.put(41)
    r = client.run(Task(kind="job", priority="HIGH", sla_ms=60_000, requirements={"pool": "cpu"},
                        payload={"fn": _fetch_plus_one, "args": (ref,)}), timeout=60)
    assert (r.status, r.output) == (Status.COMPLETED, 42), r.reason
    # Nested inside an argument, as Ray users pass lists of block refs.
    r = client.run(Task(kind="job", priority="HIGH", sla_ms=60_000, requirements={"pool": "cpu"},
                        payload={"fn": _fetch_all_plus_one, "kwargs": {"refs": [ref, ref]}}),
                   timeout=60)
    assert (r.status, r.output) == (Status.COMPLETED, [42, 42]), r.reason
