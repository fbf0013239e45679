"""LLM engines behind one protocol: simulated (always), and real ones where installed.

- ``sim``: a roofline model of a 7B or 70B model on A100s; sleeps, generates no tokens.
- ``hf``: transformers on CPU (or GPU): real tensors, batched greedy generation with a KV cache,
  from a local model directory (``model`` is its path). Needs the ``hf`` extra.
- ``vllm``: vLLM on GPUs (``model`` is a preset, ``7b`` or ``70b``, or a model id or path).
  Needs the ``vllm`` extra and a visible GPU.

The real engines import their heavy packages only when built.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from actors.engines.base import Engine, Sequence
from actors.engines.simulated import PRESETS, SimulatedEngine

ENGINES = ("sim", "hf", "vllm")


def make_engine(name: str, model: str, time_scale: float = 1.0, **options: Any) -> Engine:
    """Build an engine by name.

    ``time_scale`` applies to the simulated engine only (real engines run in real time);
    ``options`` go to the engine's constructor (``HFEngine``: device, dtype, num_threads,
    max_call_s; ``VLLMEngine``: tensor_parallel_size, max_model_len, max_num_seqs,
    gpu_memory_utilization, engine_args, ...).
    """
    if name == "sim":
        return SimulatedEngine(model, time_scale=time_scale, **options)
    if name == "hf":
        from actors.engines.hf import HFEngine, missing

        reason = missing()
        if reason:
            raise RuntimeError(f"engine 'hf' is not available here: {reason}")
        return HFEngine(model, **options)
    if name == "vllm":
        from actors.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model, **options)
    raise ValueError(f"unknown engine {name!r}; engines: {list(ENGINES)}, "
                     f"available here: {['sim', *real_engines_available()]}")


def _installed(*packages: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in packages)


def real_engines_available() -> list[str]:
    """Real engines that can run in this process.

    ``hf`` when torch and transformers are installed (found without importing them: importing
    torch costs the caller a second or two and a few hundred MB); ``vllm`` when vllm imports
    and a CUDA GPU is visible (torch is imported only where vllm is installed).
    """
    found = []
    if _installed("torch", "transformers"):
        found.append("hf")
    if _installed("vllm"):
        from actors.engines.vllm_engine import missing

        if missing() is None:
            found.append("vllm")
    return found


__all__ = ["ENGINES", "PRESETS", "Engine", "Sequence", "SimulatedEngine", "make_engine",
           "real_engines_available"]
