"""Engine calibration: the transformers engine on this CPU, and the simulator against vLLM.

Run from the repository root::

    python benchmarks/engines.py [--quick] [--json PATH]

A benchmark, not a test: it prints tables and writes ``--json`` (default ``out/engines.json``),
both naming the machine and its load average (other work on a small machine skews part 1;
the best of a few repeats is kept). The full run takes about a minute on a 2-core machine.

Part 1: the hf engine on this CPU
---------------------------------
Random Llama models built and saved here (``actors.engines.hf.build_tiny_model``) and loaded from
disk like any model directory: ``tiny`` (2 layers, hidden 64, vocabulary 1,000: 0.2 M parameters)
and ``small`` (8 layers, hidden 512, 8 heads / 4 KV heads, MLP 1,536, vocabulary 8,000: about
33 M parameters). For batch sizes 1, 2, 4, 8, 16:

- ``prefill ms``: one left-padded batched prefill of B prompts of 64 tokens;
- ``step ms``: one batched decode step (B rows, context about 64-100 tokens), median of the
  steps of a 32-step run, repeated 3 times (the best median is kept);
- ``tok/s``: B / step time, the engine's decode throughput at that batch size;
- end to end through ``HFEngine.step`` (what ``LLMActor`` calls): B requests of 32 new tokens
  each run together (batched) and one after another (unbatched); tokens/s = B * 32 / wall time.

Part 2: the simulator against published vLLM measurements
---------------------------------------------------------
The simulated engine's roofline (``actors.engines.simulated.Roofline``, with its shipped
efficiencies mbu=0.7, mfu=0.5, 1 ms step overhead, TP efficiency 0.85 at TP=4) is evaluated for
the hardware and model of each published run, and its decode time per token is compared with the
measured one at each batch size the run passed through.

Sources (found with the project's search tool; nothing is invented, derivations are stated):

- Lambda Labs, ``LambdaLabsML/vllm-benchmark`` (vLLM ``benchmark_serving.py``, 10 ShareGPT prompts
  sent at once, September 2024). Files, with the commit read:

  * ``results/prompt_10/1xA100-80GB-SXM/Mistral-7B-Instruct-v0.3_tp1_len2000.json`` @ a9b42a5f
  * ``results/prompt_10/1xH100-80GB-SXM/Mistral-7B-Instruct-v0.3_tp1_len2048.json`` @ a4f9f437
  * ``results/prompt_10/4xA100-80GB-SXM/Meta-Llama-3-70B-Instruct_tp4_len2000.json`` @ a9b42a5f
  * ``results/prompt_10/4xH100-80GB-SXM/Meta-Llama-3-70B-Instruct_tp4_len2048.json`` @ a4f9f437

  Each file lists every request's input and output length, TTFT and inter-chunk latencies. The
  stream delivers 10 tokens per chunk (every request's chunk count equals
  ceil((output_len - 1) / 10)), so a full chunk's latency / 10 is the decode time per token. All
  prompts arrive at t=0 and are prefilled together, so after the first chunk the batch is
  exactly the set of requests not yet finished: the longest request's chunk k runs with
  ``#{requests with >= k chunks}`` sequences. Derived here: per batch size, the median of the
  longest request's full chunks at that batch size / 10 (its first chunk and its last, partial,
  chunk excluded). The longest request's chunk latencies are copied below (rounded to 0.1 us).

- John Musgrave, "vLLM throughput-latency sweep on NVIDIA A100"
  (https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on): vLLM 0.23.0,
  Llama-3.1-8B-Instruct BF16, one A100 40GB, 1,024 input / 128 output tokens: "decode at one
  request per time runs at about 75 tokens/sec" and batching gives "a 6.6x gain" at concurrency 8.
  These are output-token throughputs (prefill included); the simulator's figure is the same
  run (C requests of 1,024 / 128 tokens at t=0) on ``raysched.sim.SimLLMWorker``, in its
  chunked-prefill model (the default, vLLM V1's 2,048-token step budget) and in the older
  whole-prefill stall. Only these two points were legible in the source; the other concurrency
  levels were not, so they are not used.

- Time to first token: the Mistral-7B A100 file's ``ttfts`` (its ten prompts, 1,585 tokens,
  prefilled in one batch), against the same ten requests on ``SimLLMWorker`` both ways. The
  chunked model samples each first token in the step that ends its prompt; the stall model
  after one more decode step. The other files' TTFTs are not copied here.

- Not found: per-batch-size vLLM figures for Llama-2-70B (the simulator's 70B preset); the 70B
  rows use Llama-3-70B (70.6 B parameters, same 80 layers, 8 KV heads of 128) instead, evaluated
  with both the preset's model constants and Llama-3-70B's.

Hardware constants: A100-80GB SXM 2,039 GB/s, 312 TFLOPS BF16 dense (the simulator's own);
H100 SXM 3,350 GB/s, 989 TFLOPS BF16 dense (NVIDIA's H100 table as reproduced at
https://archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html, 1,979 TFLOPS "shown with sparsity,
1/2 lower without"; and https://glennklockwood.com/garden/processors/h100); A100 40GB 1,555 GB/s
(1.56 TB/s at https://nelsahost.com/compatibility/can-i-run-llama-31-8b-on-a100-40gb-int8).
Model constants: Llama-3-70B 70.6 B parameters, 80 layers, 8 KV heads of 128; Llama-3.1-8B
8.03 B parameters, 32 layers, 8 KV heads of 128 (the models' published configs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raysched.core.roofline import (
    A100_80GB,
    LLAMA2_70B,
    MISTRAL_7B,
    GPUSpec,
    ModelSpec,
    Roofline,
)

BATCH_SIZES = (1, 2, 4, 8, 16)
CHUNK_TOKENS = 10

H100_SXM = GPUSpec("H100-80GB-SXM", mem_bandwidth_bytes_s=3.35e12, peak_flops=989e12)
A100_40GB = GPUSpec("A100-40GB", mem_bandwidth_bytes_s=1.555e12, peak_flops=312e12)
LLAMA3_70B = ModelSpec("Llama-3-70B", 70.6e9, 80, 8, 128, 8_192)
LLAMA31_8B = ModelSpec("Llama-3.1-8B", 8.03e9, 32, 8, 128, 131_072)

LAMBDA = "LambdaLabsML/vllm-benchmark"

# The longest request's inter-chunk latencies (s), copied from each file's "itls" (index 5),
# with every request's input and output lengths.
LAMBDA_RUNS: list[dict[str, Any]] = [
    {
        "name": "Mistral-7B, 1x A100-80GB",
        "source": f"{LAMBDA} results/prompt_10/1xA100-80GB-SXM/"
                  "Mistral-7B-Instruct-v0.3_tp1_len2000.json @ a9b42a5f (2024-09-07)",
        "models": {"preset 7b (Mistral-7B)": MISTRAL_7B},
        "gpu": A100_80GB, "num_gpus": 1, "tp_efficiency": 1.0,
        "input_lens": [14, 30, 28, 12, 375, 29, 487, 369, 5, 236],
        "output_lens": [129, 883, 273, 165, 0, 928, 10, 26, 8, 18],
        # The file's "ttfts" (s) of the nine requests that generated tokens (the one with no
        # output reports 0.0): the ten prompts (1,585 tokens) were prefilled in one batch.
        "ttfts": [0.1545947, 0.1542889, 0.1541631, 0.1540405, 0.1536001, 0.1529503, 0.1533543,
                  0.1524457, 0.1530548],
        "longest_itls": [
            0.1121003, 0.1107041, 0.1115024, 0.1084565, 0.1089477, 0.1085798, 0.1085055,
            0.1089461, 0.1082503, 0.1094380, 0.1093588, 0.1097201, 0.1110357, 0.1091026,
            0.1110137, 0.1096144, 0.1089512, 0.1096739, 0.1089784, 0.1090691, 0.1091133,
            0.1089991, 0.1099952, 0.1108013, 0.1111609, 0.1103644, 0.1106711, 0.1106955,
            0.1080272, 0.1072941, 0.1076631, 0.1078570, 0.1071751, 0.1073113, 0.1085760,
            0.1070893, 0.1078443, 0.1072788, 0.1073147, 0.1077226, 0.1072550, 0.1073020,
            0.1076440, 0.1077463, 0.1072257, 0.1076231, 0.1083232, 0.1070884, 0.1077990,
            0.1071878, 0.1074612, 0.1077086, 0.1075934, 0.1084348, 0.1073959, 0.1073203,
            0.1075891, 0.1076282, 0.1077241, 0.1075954, 0.1076957, 0.1078010, 0.1074593,
            0.1077523, 0.1078925, 0.1077814, 0.1074536, 0.1078105, 0.1077670, 0.1076185,
            0.1077096, 0.1080452, 0.1079555, 0.1078845, 0.1079508, 0.1079935, 0.1080021,
            0.1078829, 0.1083039, 0.1073682, 0.1076849, 0.1082296, 0.1080825, 0.1079386,
            0.1087650, 0.1075506, 0.1081051, 0.1079784, 0.1079124, 0.1092297, 0.1090487,
            0.1095292, 0.1065096,
        ],
    },
    {
        "name": "Mistral-7B, 1x H100-80GB",
        "source": f"{LAMBDA} results/prompt_10/1xH100-80GB-SXM/"
                  "Mistral-7B-Instruct-v0.3_tp1_len2048.json @ a4f9f437 (2024-09-07)",
        "models": {"preset 7b (Mistral-7B)": MISTRAL_7B},
        "gpu": H100_SXM, "num_gpus": 1, "tp_efficiency": 1.0,
        "input_lens": [14, 30, 28, 12, 375, 29, 487, 369, 5, 236],
        "output_lens": [129, 883, 273, 169, 0, 928, 10, 26, 8, 57],
        "longest_itls": [
            0.0708628, 0.0695081, 0.0693587, 0.0688629, 0.0690168, 0.0689647, 0.0675429,
            0.0677709, 0.0678668, 0.0679846, 0.0681643, 0.0686580, 0.0696257, 0.0684673,
            0.0690606, 0.0689225, 0.0693979, 0.0681666, 0.0682327, 0.0681886, 0.0682839,
            0.0683368, 0.0682658, 0.0686543, 0.0683124, 0.0683704, 0.0684216, 0.0691316,
            0.0675764, 0.0676099, 0.0677128, 0.0681043, 0.0675808, 0.0676885, 0.0676996,
            0.0676029, 0.0676751, 0.0676927, 0.0677596, 0.0676141, 0.0676627, 0.0676382,
            0.0676936, 0.0678864, 0.0677887, 0.0676520, 0.0681979, 0.0675630, 0.0677403,
            0.0676837, 0.0677128, 0.0677074, 0.0677831, 0.0678089, 0.0677129, 0.0677551,
            0.0677760, 0.0680105, 0.0678017, 0.0682464, 0.0674259, 0.0676437, 0.0681910,
            0.0678419, 0.0676634, 0.0677609, 0.0684961, 0.0675264, 0.0679221, 0.0680140,
            0.0677083, 0.0679131, 0.0678445, 0.0679083, 0.0678179, 0.0678382, 0.0678089,
            0.0678761, 0.0678058, 0.0678675, 0.0678904, 0.0680550, 0.0679358, 0.0678001,
            0.0678442, 0.0681273, 0.0678587, 0.0684386, 0.0679526, 0.0675051, 0.0676565,
            0.0676408, 0.0658993,
        ],
    },
    {
        "name": "Llama-3-70B, 4x A100-80GB (TP=4)",
        "source": f"{LAMBDA} results/prompt_10/4xA100-80GB-SXM/"
                  "Meta-Llama-3-70B-Instruct_tp4_len2000.json @ a9b42a5f (2024-09-07)",
        "models": {"preset 70b (Llama-2-70B)": LLAMA2_70B, "Llama-3-70B": LLAMA3_70B},
        "gpu": A100_80GB, "num_gpus": 4, "tp_efficiency": 0.85,
        "input_lens": [13, 25, 27, 10, 329, 29, 399, 328, 4, 205],
        "output_lens": [120, 579, 233, 194, 101, 741, 0, 0, 6, 35],
        "longest_itls": [
            0.3263866, 0.2923106, 0.2948065, 0.2942883, 0.2954371, 0.2950141, 0.2939796,
            0.2949253, 0.2952220, 0.2950057, 0.2941913, 0.2977046, 0.2860580, 0.2888005,
            0.2897062, 0.2901763, 0.2881351, 0.2889092, 0.2892328, 0.2886542, 0.2888559,
            0.2882913, 0.2891321, 0.2899100, 0.2807086, 0.2821063, 0.2820897, 0.2820785,
            0.2824633, 0.2821628, 0.2821908, 0.2826700, 0.2815360, 0.2819526, 0.2821211,
            0.2819025, 0.2826217, 0.2820888, 0.2820971, 0.2820140, 0.2827129, 0.2815589,
            0.2819935, 0.2819851, 0.2820511, 0.2828395, 0.2819142, 0.2820078, 0.2820970,
            0.2820801, 0.2834986, 0.2812319, 0.2821031, 0.2820842, 0.2828690, 0.2817910,
            0.2823305, 0.2837933, 0.2775912, 0.2760580, 0.2768845, 0.2768133, 0.2773751,
            0.2773986, 0.2769403, 0.2769649, 0.2771504, 0.2784637, 0.2765543, 0.2770107,
            0.2766286, 0.2771161, 0.2771045, 0.2778795,
        ],
    },
    {
        "name": "Llama-3-70B, 4x H100-80GB (TP=4)",
        "source": f"{LAMBDA} results/prompt_10/4xH100-80GB-SXM/"
                  "Meta-Llama-3-70B-Instruct_tp4_len2048.json @ a4f9f437 (2024-09-07)",
        "models": {"preset 70b (Llama-2-70B)": LLAMA2_70B, "Llama-3-70B": LLAMA3_70B},
        "gpu": H100_SXM, "num_gpus": 4, "tp_efficiency": 0.85,
        "input_lens": [13, 25, 27, 10, 329, 29, 399, 328, 4, 205],
        "output_lens": [120, 661, 233, 194, 101, 741, 0, 0, 6, 35],
        "longest_itls": [
            0.1819174, 0.1777382, 0.1776870, 0.1780644, 0.1784710, 0.1774528, 0.1777688,
            0.1783944, 0.1781658, 0.1783815, 0.1771982, 0.1804808, 0.1767123, 0.1749570,
            0.1751991, 0.1755011, 0.1747797, 0.1749931, 0.1750842, 0.1749181, 0.1751519,
            0.1749975, 0.1752584, 0.1769507, 0.1748774, 0.1738162, 0.1738880, 0.1740371,
            0.1736901, 0.1740694, 0.1743316, 0.1738824, 0.1743408, 0.1735846, 0.1737703,
            0.1739977, 0.1736447, 0.1749301, 0.1739632, 0.1750745, 0.1736362, 0.1735060,
            0.1742888, 0.1739215, 0.1741237, 0.1743762, 0.1741584, 0.1738794, 0.1745497,
            0.1737539, 0.1742593, 0.1742991, 0.1743866, 0.1740203, 0.1742859, 0.1739813,
            0.1740417, 0.1742465, 0.1746448, 0.1739009, 0.1740188, 0.1745903, 0.1738578,
            0.1741876, 0.1773421, 0.1740291, 0.1743483, 0.1700154, 0.1701298, 0.1702093,
            0.1710605, 0.1694993, 0.1705012, 0.1704717,
        ],
    },
]

MUSGRAVE = {
    "source": "https://johnmusgrave.com/p/vllm-throughput-latency-sweep-on (vLLM 0.23.0)",
    "name": "Llama-3.1-8B BF16, 1x A100-40GB, 1,024 in / 128 out",
    "points": {1: 75.0, 8: 75.0 * 6.6},  # output tokens/s at concurrency C
}


# -- machine -----------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    from raysched.bench.report import cpu_model

    cpu = cpu_model() or platform.processor() or ""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu": cpu, "cpu_count": os.cpu_count(),
                            "load_average_1_5_15": os.getloadavg()}
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__,
                    cuda=torch.cuda.is_available())
    except ImportError:
        pass
    return info


# -- part 1: the hf engine on this CPU ---------------------------------------------------------

MODELS = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
             "intermediate_size": 128, "vocab_size": 1000},
    "small": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4,
              "intermediate_size": 1536, "vocab_size": 8000},
}


def bench_hf(name: str, shape: dict[str, int], root: Path, quick: bool) -> dict[str, Any]:
    import torch

    from actors.engines.base import Sequence
    from actors.engines.hf import HFEngine, _Batch, build_tiny_model

    t0 = time.perf_counter()
    path = build_tiny_model(root / name, seed=0, **shape)
    engine = HFEngine(str(path), calibrate=False)
    built_s = time.perf_counter() - t0
    vocab = shape["vocab_size"]
    prompt_tokens, steps, repeats, new_tokens = 64, (16 if quick else 32), (2 if quick else 3), 32
    gen = torch.Generator().manual_seed(0)
    rows = []
    for b in BATCH_SIZES:
        prefills, step_medians = [], []
        for _ in range(repeats):
            engine._batch = _Batch()
            prompts = torch.randint(4, vocab, (b, prompt_tokens), generator=gen).tolist()
            with torch.inference_mode():
                t = time.perf_counter()
                engine._prefill(prompts, [object() for _ in range(b)])
                prefills.append(time.perf_counter() - t)
                times = []
                for _ in range(steps):
                    t = time.perf_counter()
                    engine._decode()
                    times.append(time.perf_counter() - t)
            step_medians.append(statistics.median(times))
        engine._batch = _Batch()
        step_s = min(step_medians)
        # End to end through step(), what LLMActor calls: batched vs one request at a time.
        # Best of ``repeats`` runs each, as the step times above.
        text = "the market risk report for the quarter " * 4
        batched_s = alone_s = math.inf
        for _ in range(repeats):
            batched = [Sequence(f"b{i}", text + str(i), 0, new_tokens) for i in range(b)]
            alone = [Sequence(f"u{i}", text + str(i), 0, new_tokens) for i in range(b)]
            t = time.perf_counter()
            asyncio.run(_drain(engine, batched))
            batched_s = min(batched_s, time.perf_counter() - t)
            t = time.perf_counter()
            for s in alone:
                asyncio.run(_drain(engine, [s]))
            alone_s = min(alone_s, time.perf_counter() - t)
        rows.append({
            "batch": b, "prefill_ms": 1e3 * min(prefills), "step_ms": 1e3 * step_s,
            "decode_tok_s": b / step_s,
            "e2e_batched_tok_s": sum(s.num_generated for s in batched) / batched_s,
            "e2e_unbatched_tok_s": sum(s.num_generated for s in alone) / alone_s,
            "same_tokens": [s.token_ids for s in batched] == [s.token_ids for s in alone],
        })
    return {"model": name, "params_m": engine.num_params / 1e6, "shape": shape,
            "threads": engine.num_threads, "label": engine.label, "build_and_load_s": built_s,
            "prompt_tokens": prompt_tokens, "decode_steps": steps, "new_tokens": new_tokens,
            "rows": rows}


async def _drain(engine: Any, seqs: list[Any]) -> None:
    while any(not s.done for s in seqs):
        await engine.step(seqs, 1 << 30)
    await engine.step(seqs, 1 << 30)


# -- part 2: the simulator against vLLM --------------------------------------------------------

def _chunks(output_len: int) -> int:
    return 0 if output_len <= 0 else math.ceil((output_len - 1) / CHUNK_TOKENS)


def lambda_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    counts = [_chunks(n) for n in run["output_lens"]]
    longest = max(range(len(counts)), key=lambda i: counts[i])
    itls = run["longest_itls"]
    assert len(itls) == counts[longest], (run["name"], len(itls), counts[longest])
    by_batch: dict[int, list[tuple[int, float]]] = {}
    for k in range(2, counts[longest]):  # skip the first chunk and the last (partial) one
        active = sum(1 for c in counts if c >= k)
        by_batch.setdefault(active, []).append((k, itls[k - 1]))
    rows = []
    for batch, chunks in sorted(by_batch.items()):
        measured = statistics.median(t for _, t in chunks) / CHUNK_TOKENS
        mid = chunks[len(chunks) // 2][0]
        # Context of each running sequence in the middle of that stretch: prompt + tokens so far.
        contexts = [n_in + 1 + CHUNK_TOKENS * (mid - 1) + CHUNK_TOKENS // 2
                    for n_in, c in zip(run["input_lens"], counts, strict=True) if c >= mid]
        row: dict[str, Any] = {"batch": batch, "chunks": len(chunks),
                               "measured_ms": 1e3 * measured, "sim": {}}
        for label, model in run["models"].items():
            roof = Roofline(model, run["gpu"], num_gpus=run["num_gpus"],
                            tp_efficiency=run["tp_efficiency"])
            sim = roof.decode_step_s(contexts)
            row["sim"][label] = {"sim_ms": 1e3 * sim,
                                 "error_pct": 100.0 * (sim - measured) / measured}
        rows.append(row)
    return rows


def sim_first_and_last_s(roof: Roofline, prompts: list[int], outputs: list[int],
                         chunked: bool) -> list[tuple[float, float]]:
    """(first token, last token) times of requests that all arrive at t=0 on one simulated
    worker (``raysched.sim.SimLLMWorker``, the model the benchmarks run), in the chunked-prefill
    model (vLLM V1's default) or the whole-prefill stall."""
    from raysched.core.types import CoreTask, Priority
    from raysched.sim.workers import SimLLMWorker, SimTask

    def run(new_tokens: list[int]) -> list[float]:
        w = SimLLMWorker("probe", max_batch_size=len(prompts), roofline=roof,
                         chunked_prefill=chunked)
        for i, (p, n) in enumerate(zip(prompts, new_tokens, strict=True)):
            core = CoreTask(f"r{i}", "calibration", Priority.HIGH, math.inf, "llm", p, n)
            w.add(SimTask(0.0, core, true_new_tokens=n), 0.0)
        ends: dict[str, float] = {}
        while (t := w.next_event_s()) is not None:
            ends.update({f.task_id: t for f in w.pop_finished(t)})
        return [ends[f"r{i}"] for i in range(len(prompts))]

    # One token each gives the batch's time to first token; the real lengths give the ends.
    return list(zip(run([1] * len(prompts)), run(outputs), strict=True))


def musgrave_rows() -> list[dict[str, Any]]:
    """Output tokens/s of C requests of 1,024 in / 128 out sent at once, simulated both ways."""
    roof = Roofline(LLAMA31_8B, A100_40GB, num_gpus=1)
    rows = []
    for c, measured in MUSGRAVE["points"].items():
        row: dict[str, Any] = {"concurrency": c, "measured_tok_s": measured}
        for mode, chunked in (("chunked", True), ("stall", False)):
            makespan_s = max(end for _, end in
                             sim_first_and_last_s(roof, [1024] * c, [128] * c, chunked))
            sim = c * 128 / makespan_s
            row[mode] = {"sim_tok_s": sim, "error_pct": 100.0 * (sim - measured) / measured}
        rows.append(row)
    return rows


def ttft_rows() -> list[dict[str, Any]]:
    """Median time to first token of the Lambda runs that carry TTFTs, simulated both ways."""
    rows = []
    for run in LAMBDA_RUNS:
        if "ttfts" not in run:
            continue
        measured = statistics.median(run["ttfts"])
        row: dict[str, Any] = {"name": run["name"], "measured_ms": 1e3 * measured}
        for label, model in run["models"].items():
            roof = Roofline(model, run["gpu"], num_gpus=run["num_gpus"],
                            tp_efficiency=run["tp_efficiency"])
            for mode, chunked in (("chunked", True), ("stall", False)):
                times = sim_first_and_last_s(roof, run["input_lens"], run["output_lens"],
                                             chunked)
                sim = statistics.median(first for (first, _), n in
                                        zip(times, run["output_lens"], strict=True) if n > 0)
                row[f"{label}, {mode}"] = {"sim_ms": 1e3 * sim,
                                           "error_pct": 100.0 * (sim - measured) / measured}
        rows.append(row)
    return rows


# -- report ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    p.add_argument("--json", default="out/engines.json")
    p.add_argument("--skip-hf", action="store_true", help="only the simulator comparison")
    args = p.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    info = machine()
    console.print(f"machine: {info}")
    out: dict[str, Any] = {"machine": info, "quick": args.quick}

    if not args.skip_hf:
        from actors.engines.hf import missing

        reason = missing()
        if reason:
            console.print(f"part 1 skipped: {reason}")
            out["hf"] = {"skipped": reason}
        else:
            results = []
            with tempfile.TemporaryDirectory(prefix="raysched-bench-") as tmp:
                for name, shape in MODELS.items():
                    r = bench_hf(name, shape, Path(tmp), args.quick)
                    results.append(r)
                    t = Table(title=f"hf engine on this CPU: {r['model']} random Llama, "
                                    f"{r['params_m']:.1f} M params, {r['threads']} torch "
                                    f"thread(s), prompt {r['prompt_tokens']} tokens")
                    for col in ("batch", "prefill ms", "step ms", "decode tok/s",
                                "e2e batched tok/s", "e2e unbatched tok/s", "speed-up",
                                "same ids"):
                        t.add_column(col, justify="right")
                    for row in r["rows"]:
                        t.add_row(str(row["batch"]), f"{row['prefill_ms']:.2f}",
                                  f"{row['step_ms']:.2f}", f"{row['decode_tok_s']:.0f}",
                                  f"{row['e2e_batched_tok_s']:.0f}",
                                  f"{row['e2e_unbatched_tok_s']:.0f}",
                                  f"{row['e2e_batched_tok_s'] / row['e2e_unbatched_tok_s']:.2f}x",
                                  "yes" if row["same_tokens"] else "NO")
                    console.print(t)
            out["hf"] = results

    sim: dict[str, Any] = {"lambda": [], "musgrave": None}
    for run in LAMBDA_RUNS:
        rows = lambda_rows(run)
        sim["lambda"].append({"name": run["name"], "source": run["source"], "rows": rows})
        labels = list(run["models"])
        t = Table(title=f"simulator vs vLLM: {run['name']}  [{run['source']}]")
        for col in ("batch", "chunks", "vLLM ms/token"):
            t.add_column(col, justify="right")
        for label in labels:
            t.add_column(f"sim {label}", justify="right")
            t.add_column("error", justify="right")
        for row in rows:
            cells = [str(row["batch"]), str(row["chunks"]), f"{row['measured_ms']:.2f}"]
            for label in labels:
                s = row["sim"][label]
                cells += [f"{s['sim_ms']:.2f}", f"{s['error_pct']:+.1f}%"]
            t.add_row(*cells)
        console.print(t)
    sim["musgrave"] = {"name": MUSGRAVE["name"], "source": MUSGRAVE["source"],
                       "rows": musgrave_rows()}
    t = Table(title=f"simulator vs vLLM: {MUSGRAVE['name']}  [{MUSGRAVE['source']}]")
    for col in ("concurrency", "vLLM out tok/s", "sim chunked", "error", "sim stall", "error"):
        t.add_column(col, justify="right")
    for row in sim["musgrave"]["rows"]:
        t.add_row(str(row["concurrency"]), f"{row['measured_tok_s']:.0f}",
                  *[cell for mode in ("chunked", "stall") for cell in
                    (f"{row[mode]['sim_tok_s']:.0f}", f"{row[mode]['error_pct']:+.1f}%")])
    console.print(t)
    sim["ttft"] = ttft_rows()
    t = Table(title="simulator vs vLLM: median time to first token, all prompts sent at once")
    for col in ("run", "vLLM ms", "sim model", "sim ms", "error"):
        t.add_column(col, justify="right")
    for row in sim["ttft"]:
        for label, cell in row.items():
            if isinstance(cell, dict):
                t.add_row(row["name"], f"{row['measured_ms']:.1f}", label,
                          f"{cell['sim_ms']:.1f}", f"{cell['error_pct']:+.1f}%")
    console.print(t)
    errors = [abs(s["error_pct"]) for run in sim["lambda"] for row in run["rows"]
              for s in row["sim"].values()]
    # The default (chunked) model's points; the stall model's are in the JSON beside them.
    errors += [abs(r["chunked"]["error_pct"]) for r in sim["musgrave"]["rows"]]
    errors += [abs(c["error_pct"]) for r in sim["ttft"] for k, c in r.items()
               if isinstance(c, dict) and k.endswith("chunked")]
    sim["abs_error_pct"] = {"median": statistics.median(errors), "max": max(errors)}
    console.print(f"simulator |error| over all points: median {statistics.median(errors):.1f}%, "
                  f"max {max(errors):.1f}%")
    out["simulator_vs_vllm"] = sim
    out["load_average_at_end"] = os.getloadavg()
    console.print(f"load average at start {info['load_average_1_5_15']}, at end "
                  f"{out['load_average_at_end']} (other work on this machine skews part 1)")

    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
