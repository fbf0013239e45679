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
from actors.engines.simulated import SimulatedEngine
from raysched.core.roofline import PRESETS

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


def demo_config(engine: str = "auto", time_scale: float = 1.0) -> Any:
    """The demo's scheduler config with its LLM pools on ``engine``; None keeps the default.

    - ``auto``: the default config (a real engine where the cluster has one, else simulated).
    - ``sim``: every LLM pool simulated.
    - ``hf``: the llm-7b pool on the transformers engine with a TINY RANDOM Llama built and saved
      into a temporary directory now (real tensors, real batched generation, gibberish output);
      llm-70b keeps ``auto`` (simulated without GPUs, and the startup notes say so).
    - ``vllm``: both LLM pools on vLLM (GPU nodes): 7B on one GPU per actor, 70B
      tensor-parallel in a placement group the engine makes (so its actors ask for no GPU).
    """
    if engine == "auto":
        return None
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; engines: {['auto', *ENGINES]}")
    from raysched.config import default_config

    config = default_config(time_scale=time_scale)
    pools = []
    for pool in config.pools:
        if pool.kind != "llm":
            pools.append(pool)
        elif engine == "sim":
            print(f"  engine sim: pool {pool.name} runs the SIMULATED engine ({pool.model}): "
                  f"roofline timing, no tokens generated", flush=True)
            pools.append(pool.model_copy(update={"engine": "sim"}))
        elif engine == "hf" and pool.model == "7b":
            pools.append(pool.model_copy(update={"engine": "hf", "model": _tiny_demo_model()}))
        elif engine == "hf":
            pools.append(pool)  # engine "auto": simulated on this CPU box, and the notes say so
        else:
            gpus = 1.0 if pool.model == "7b" else 0.0
            pools.append(pool.model_copy(update={"engine": "vllm", "num_gpus": gpus}))
    return config.model_copy(update={"pools": pools})


def _tiny_demo_model() -> str:
    import atexit
    import shutil
    import tempfile

    from actors.engines.hf import TINY_MODEL_NOTE, build_tiny_model

    path = tempfile.mkdtemp(prefix="raysched-tiny-llama-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    build_tiny_model(path)
    print(f"  engine hf: pool llm-7b runs the transformers engine on {TINY_MODEL_NOTE}; "
          f"a random Llama (2 layers, hidden 64, vocabulary 1,000) built and saved to {path} "
          f"and loaded from there like any model directory", flush=True)
    return path


__all__ = ["ENGINES", "PRESETS", "Engine", "Sequence", "SimulatedEngine", "demo_config",
           "make_engine", "real_engines_available"]
