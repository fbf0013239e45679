"""The vLLM engine: the real GPU path (vLLM's V1 ``AsyncLLM``), imported lazily.

vLLM batches internally (continuous batching, paged KV cache, its own scheduler), so this engine
does not form batches; it maps ``LLMActor``'s loop onto vLLM's request streams and the loop runs
unchanged:

- The first time ``step`` sees a ``Sequence`` it starts one ``AsyncLLM.generate(prompt,
  SamplingParams(max_tokens=seq.max_new_tokens, temperature=0, output_kind=DELTA), request_id,
  priority=seq.priority)`` stream for it, consumed by a background task that appends tokens as
  they come. The engine runs with ``scheduling_policy="priority"``, so vLLM itself admits and
  preempts by the task's class (CRITICAL=1 .. LOW=4; in vLLM a lower value runs first).
- ``step`` then waits until at least one sequence of the batch has new tokens, finished, or
  failed, moves the new tokens onto the ``Sequence`` objects and returns the most tokens any
  sequence got. A sequence that stopped before ``max_new_tokens`` (end of sequence or a stop
  token) gets ``finished_early``; vLLM never generates past ``max_tokens``.
- A stream whose sequence is no longer in the batch, or was marked ``finished_early`` by someone
  else (``LLMActor.abort``: a cancellation or an expiry), is aborted in the engine with
  ``AsyncLLM.abort(request_id)``. The consumer checks after every output, so an abort reaches
  vLLM within one decode step even when the actor has nothing else running and calls no ``step``.
- ``EngineDeadError`` (or any failure of the engine) makes ``step`` raise; ``LLMActor`` reports
  every request of the batch as a retryable failure and the scheduler requeues them. The engine
  stays dead (``dead`` is True) and every later ``step`` raises at once.
- Telemetry per request (``telemetry(request_id)``): time to first token, tokens, time per output
  token after the first, finish reason, measured on the actor's clock.

Placement: a 7B model runs on the one GPU Ray gave the actor (``num_gpus=1``, tensor parallel 1,
vLLM's in-process executor). A 70B model runs tensor-parallel over 4 or 8 GPUs: the engine makes
a ``STRICT_PACK`` placement group of one ``{"GPU": 1, "CPU": 1}`` bundle per rank on the actor's own
node and hands it to vLLM with ``distributed_executor_backend="ray"``; the actor itself then asks
for no GPU (``num_gpus=0``), or the group could never be placed next to it.

API checked against vLLM's source (``vllm/v1/engine/async_llm.py``: ``from_engine_args``,
``from_vllm_config``, ``generate(prompt, sampling_params, request_id, *, priority=0)``,
``abort(request_id)``; ``vllm/v1/engine/exceptions.py``: ``EngineDeadError``;
``vllm/v1/executor/ray_utils.py``: ``parallel_config.placement_group`` is used when set;
``SchedulerConfig.policy``: "priority" means a lower value is handled earlier).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from actors.engines.base import Sequence
from raysched.core.roofline import PRESETS as ROOFLINES
from raysched.core.types import CHARS_PER_TOKEN, ServicePrior

log = logging.getLogger("raysched.vllm")
TELEMETRY_KEPT = 10_000


@dataclass(frozen=True)
class VLLMPreset:
    """A model and how to serve it. The presets match the simulator's (``raysched.core.roofline``)
    so the simulator can be calibrated against the same models."""

    model: str
    tensor_parallel_size: int
    max_model_len: int
    sim_preset: str


PRESETS: dict[str, VLLMPreset] = {
    "7b": VLLMPreset("mistralai/Mistral-7B-Instruct-v0.3", 1, 32_768, "7b"),
    "70b": VLLMPreset("meta-llama/Llama-2-70b-chat-hf", 4, 4_096, "70b"),
}


def missing() -> str | None:
    """Why the engine cannot run here (package or GPU missing), or None when it can."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'raysched[vllm]' on a GPU node)"
    try:
        import torch
    except ImportError as exc:  # vllm without torch is a broken install
        return f"vllm needs torch: {exc}"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to this process"
    return None


def _is_dead_error(exc: BaseException) -> bool:
    return type(exc).__name__ in ("EngineDeadError", "AsyncEngineDeadError")


@dataclass
class _Stream:
    """One request's generate() stream and what has arrived on it."""

    seq: Sequence
    request_id: str
    start_s: float
    task: asyncio.Task[None] | None = None
    tokens: list[int] = field(default_factory=list)
    applied: int = 0  # tokens already moved onto ``seq``
    finished: bool = False
    finish_reason: str | None = None
    error: BaseException | None = None
    aborted: bool = False
    first_token_s: float | None = None
    last_token_s: float | None = None

    @property
    def has_news(self) -> bool:
        return len(self.tokens) > self.applied or self.finished or self.error is not None


class VLLMEngine:
    """One vLLM ``AsyncLLM`` per actor; ``LLMActor`` drives it through ``step``."""

    simulated = False

    def __init__(self, model: str = "7b", *, tensor_parallel_size: int | None = None,
                 max_model_len: int | None = None, max_num_seqs: int = 256,
                 gpu_memory_utilization: float = 0.90, dtype: str = "auto",
                 enforce_eager: bool = False, seed: int = 0,
                 engine_args: dict[str, Any] | None = None,
                 placement_timeout_s: float = 600.0, step_timeout_s: float = 600.0,
                 client: Any = None, sampling_params: Any = None,
                 tokenizer: Any = None) -> None:
        preset = PRESETS.get(model)
        self.model = preset.model if preset else model
        self.tensor_parallel_size = int(tensor_parallel_size or
                                        (preset.tensor_parallel_size if preset else 1))
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be at least 1")
        self.sim_preset = preset.sim_preset if preset else None
        self.name = "vllm"
        self.step_timeout_s = step_timeout_s
        self.placement_group: Any = None
        self._streams: dict[int, _Stream] = {}  # id(seq) -> stream
        self._ids = itertools.count()
        self._progress: asyncio.Event | None = None
        self._dead: BaseException | None = None
        self.telemetry_by_id: collections.OrderedDict[str, dict[str, Any]] = (
            collections.OrderedDict())
        max_len = max_model_len or (preset.max_model_len if preset else None)
        if client is None:
            reason = missing()
            if reason:
                raise RuntimeError(f"the vllm engine cannot run here: {reason}")
            client, max_len = self._start_vllm(
                max_len, max_num_seqs=max_num_seqs,
                gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
                enforce_eager=enforce_eager, seed=seed, extra=engine_args or {},
                placement_timeout_s=placement_timeout_s)
        self._client = client
        self._sampling_params = sampling_params or self._vllm_sampling_params
        # Loaded now, not on the first request: count_tokens runs on the actor's event loop.
        self._tokenizer = self._load_tokenizer() if tokenizer is None else tokenizer
        self.max_context_tokens = int(max_len or 4096)
        self.label = (f"vLLM {self.model} on {self.tensor_parallel_size} GPU"
                      f"{'s' if self.tensor_parallel_size > 1 else ''}")

    # -- starting vLLM ---------------------------------------------------------------------

    def _start_vllm(self, max_model_len: int | None, *, max_num_seqs: int,
                    gpu_memory_utilization: float, dtype: str, enforce_eager: bool, seed: int,
                    extra: dict[str, Any], placement_timeout_s: float) -> tuple[Any, int]:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        tp = self.tensor_parallel_size
        args: dict[str, Any] = {
            "model": self.model, "tensor_parallel_size": tp, "scheduling_policy": "priority",
            "max_num_seqs": max_num_seqs, "gpu_memory_utilization": gpu_memory_utilization,
            "dtype": dtype, "enforce_eager": enforce_eager, "seed": seed,
            "max_model_len": max_model_len}
        if tp > 1:
            args["distributed_executor_backend"] = "ray"
        args.update(extra)
        engine_args = AsyncEngineArgs(**args)
        if tp > 1:
            self.placement_group = self._make_placement_group(tp, placement_timeout_s)
        vllm_config = engine_args.create_engine_config(UsageContext.ENGINE_CONTEXT)
        if self.placement_group is not None:
            vllm_config.parallel_config.placement_group = self.placement_group
        client = AsyncLLM.from_vllm_config(vllm_config)
        return client, int(vllm_config.model_config.max_model_len)

    def _make_placement_group(self, tp: int, timeout_s: float) -> Any:
        """A STRICT_PACK group of ``tp`` one-GPU bundles on this actor's node."""
        import ray
        from ray.util.placement_group import placement_group

        if not ray.is_initialized():
            raise RuntimeError("tensor-parallel vLLM runs its ranks as Ray actors: start Ray first")
        # vLLM's EngineCore runs in a child process that joins Ray on its own; point it here.
        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
        bundles: list[dict[str, float]] = [{"GPU": 1.0, "CPU": 1.0} for _ in range(tp)]
        # vLLM wants the driver (this actor's node) inside the group; STRICT_PACK keeps every rank
        # on that one node, on NVLink rather than the network.
        bundles[0][f"node:{ray.util.get_node_ip_address()}"] = 0.001
        pg = placement_group(bundles, strategy="STRICT_PACK")
        try:
            ray.get(pg.ready(), timeout=timeout_s)
        except Exception:  # noqa: BLE001 - a timeout or a removed group: both mean no room
            ray.util.remove_placement_group(pg)
            raise RuntimeError(f"no node has {tp} free GPUs next to this actor for a "
                               f"tensor-parallel group (waited {timeout_s:g} s); the 70B pool's "
                               f"actors must ask for num_gpus=0 and land on an 8-GPU "
                               f"node") from None
        return pg

    @staticmethod
    def _vllm_sampling_params(max_tokens: int) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        return SamplingParams(max_tokens=max_tokens, temperature=0.0,
                              output_kind=RequestOutputKind.DELTA)

    # -- the Engine protocol ---------------------------------------------------------------

    @property
    def dead(self) -> bool:
        return self._dead is not None or bool(getattr(self._client, "errored", False))

    def prior(self) -> ServicePrior:
        """The roofline of the matching simulated preset; telemetry corrects it online."""
        return ROOFLINES[self.sim_preset or "7b"].prior()

    def count_tokens(self, prompt: str) -> int:
        tok = self._tokenizer
        if tok is False:
            return max(1, math.ceil(len(prompt) / CHARS_PER_TOKEN))
        return max(1, len(tok(prompt)["input_ids"]))

    def _load_tokenizer(self) -> Any:
        tok = getattr(self._client, "tokenizer", None)  # vLLM's own, where it exposes one
        if tok is not None and callable(tok):
            return tok
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(self.model)
        except Exception:  # noqa: BLE001 - counting falls back to characters; generation is fine
            return False

    def text(self, seq: Sequence) -> str:
        tok = self._tokenizer
        if tok:
            return str(tok.decode(seq.token_ids, skip_special_tokens=True))
        return f"[{len(seq.token_ids)} tokens from {self.model}]"

    def telemetry(self, request_id: str) -> dict[str, Any] | None:
        """Time to first token, tokens and time per output token of a finished request."""
        return self.telemetry_by_id.get(request_id)

    async def step(self, batch: list[Sequence], max_steps: int) -> int:
        if self._progress is None:
            self._progress = asyncio.Event()
        self._raise_if_dead()
        live = [s for s in batch if not s.done]
        keep = {id(s) for s in live}
        for key, st in list(self._streams.items()):
            if key not in keep:
                self._abort(st, "left the batch")
        for s in live:
            if id(s) not in self._streams:
                self._start(s)
        if not live:
            return 0
        streams = [self._streams[id(s)] for s in live]
        deadline = time.monotonic() + self.step_timeout_s
        while not any(st.has_news for st in streams):
            self._raise_if_dead()
            self._progress.clear()
            if any(st.has_news for st in streams):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"vLLM produced nothing for {self.step_timeout_s:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), left)
        steps = 0
        failures = []
        for st in streams:
            seq = st.seq
            new = st.tokens[st.applied:st.applied + max(0, seq.remaining)]
            st.applied = len(st.tokens)
            if new:
                seq.prefilled = True
                seq.token_ids.extend(new)
                seq.num_generated += len(new)
                steps = max(steps, len(new))
            if st.error is not None:
                failures.append(st)
            elif st.finished and not seq.done:
                seq.finished_early = True  # a stop: end of sequence or a stop token
            if st.finished or st.error is not None:
                self._record(st)
                self._streams.pop(id(seq), None)
        if failures:
            if any(_is_dead_error(st.error) for st in failures if st.error is not None):
                self._dead = next(st.error for st in failures if st.error is not None)
                self._raise_if_dead()
            # A request vLLM refused or lost on its own ends alone; the other streams go on. A
            # ValueError is vLLM refusing the input (a prompt over max_model_len, say): the
            # same input would be refused again, so it is not worth another attempt.
            for st in failures:
                assert st.error is not None
                st.seq.error = f"vLLM refused request {st.request_id}: {st.error!r}"
                st.seq.error_retryable = not isinstance(st.error, ValueError)
        return steps

    # -- streams ---------------------------------------------------------------------------

    def _start(self, seq: Sequence) -> None:
        # A retried task comes back with the same id while its old stream may still be aborting.
        st = _Stream(seq, f"{seq.request_id}#{next(self._ids)}", time.monotonic())
        self._streams[id(seq)] = st
        st.task = asyncio.get_running_loop().create_task(self._consume(st))

    async def _consume(self, st: _Stream) -> None:
        assert self._progress is not None
        params = self._sampling_params(st.seq.max_new_tokens)
        stream = self._client.generate(st.seq.prompt, params, st.request_id,
                                       priority=int(st.seq.priority))
        try:
            async for out in stream:
                now = time.monotonic()
                completion = out.outputs[0] if out.outputs else None
                if completion is not None and completion.token_ids:
                    if st.first_token_s is None:
                        st.first_token_s = now
                    st.last_token_s = now
                    st.tokens.extend(completion.token_ids)
                if out.finished:
                    st.finish_reason = completion.finish_reason if completion else None
                    st.finished = True
                self._progress.set()
                if st.seq.finished_early and not st.finished:
                    # LLMActor.abort marked it (a cancellation or expiry): stop it in vLLM now.
                    self._abort(st, "aborted by the actor")
                    return
            st.finished = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a stream is reported by step
            st.error = exc
            if _is_dead_error(exc):
                self._dead = exc
        finally:
            self._progress.set()
            if not st.finished and st.error is None:
                # Left early (aborted): close the stream now rather than at garbage collection;
                # vLLM's generate() aborts its request when closed.
                try:
                    await stream.aclose()
                except Exception as exc:  # noqa: BLE001 - the request is being aborted anyway
                    log.debug("closing the stream of %s: %r", st.request_id, exc)

    def _abort(self, st: _Stream, why: str) -> None:
        self._streams.pop(id(st.seq), None)
        if st.finished or st.error is not None or st.aborted:
            return
        st.aborted = True
        st.finish_reason = f"abort ({why})"
        self._record(st)
        current = asyncio.current_task()
        if st.task is not None and st.task is not current:
            st.task.cancel()  # generate() aborts its own request when cancelled, too
        if not self.dead:
            asyncio.get_running_loop().create_task(self._abort_in_engine(st.request_id))

    async def _abort_in_engine(self, request_id: str) -> None:
        try:
            await self._client.abort(request_id)
        except Exception as exc:  # noqa: BLE001 - finished already, or the engine is gone
            log.debug("abort of %s in vLLM failed: %r", request_id, exc)

    def _record(self, st: _Stream) -> None:
        n = len(st.tokens)
        ttft = None if st.first_token_s is None else st.first_token_s - st.start_s
        tpot = None
        if n > 1 and st.first_token_s is not None and st.last_token_s is not None:
            tpot = (st.last_token_s - st.first_token_s) / (n - 1)
        self.telemetry_by_id[st.seq.request_id] = {
            "vllm_request_id": st.request_id, "ttft_s": ttft, "tpot_s": tpot,
            "num_generated_tokens": n, "finish_reason": st.finish_reason,
            "error": None if st.error is None else repr(st.error)}
        while len(self.telemetry_by_id) > TELEMETRY_KEPT:
            self.telemetry_by_id.popitem(last=False)

    def _raise_if_dead(self) -> None:
        if self.dead:
            exc = self._dead
            raise RuntimeError(f"vLLM engine is dead: {exc!r}" if exc else
                               "vLLM engine is dead (errored)") from exc

    def shutdown(self) -> None:
        """Stop vLLM and give its placement group back."""
        for st in list(self._streams.values()):
            if st.task is not None:
                st.task.cancel()
        self._streams.clear()
        stop = getattr(self._client, "shutdown", None)
        if callable(stop):
            stop()
        if self.placement_group is not None:
            import ray

            ray.util.remove_placement_group(self.placement_group)
            self.placement_group = None


__all__ = ["PRESETS", "VLLMEngine", "VLLMPreset", "missing"]
