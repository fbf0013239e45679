"""A simulated LLM engine: continuous-batching timing of a roofline model, without a GPU.

The step and prefill times come from ``raysched.core.roofline`` (constants and their sources are
there). Time passes in ``asyncio.sleep`` scaled by ``time_scale`` (0.01 makes a 2 s call take
20 ms), and every output says it is simulated.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

from actors.engines.base import Sequence
from raysched.core.roofline import PRESETS
from raysched.core.types import CHARS_PER_TOKEN, ServicePrior


class SimulatedEngine:
    """Continuous-batching timing of a real model on real GPUs, without either.

    Sleeps for the roofline time of each step, divided by nothing and multiplied by
    ``time_scale``. Generated text is a placeholder that says it is simulated.
    """

    simulated = True
    resumes = True  # by count: it has no tokens, only their number

    def __init__(self, preset: str = "7b", time_scale: float = 1.0,
                 min_sleep_s: float = 0.002, speed: float = 1.0) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown simulated model {preset!r}; presets: {sorted(PRESETS)}")
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.preset = preset
        self.roofline = PRESETS[preset]
        self.time_scale = time_scale
        # Sleeping less than about a millisecond is mostly event-loop overhead, so short steps
        # (small time_scale) are run a few at a time; new requests join between chunks.
        self.min_sleep_s = min_sleep_s
        self.name = f"sim-{preset}"
        self.max_context_tokens = self.roofline.model.max_context_tokens
        # A service-time multiplier the prior does not know: a slower GPU, a noisy neighbour.
        self.speed = speed
        self.busy_model_s = 0.0  # modelled GPU time, unscaled

    @property
    def label(self) -> str:
        r = self.roofline
        return f"{r.model.name} on {r.num_gpus}x {r.gpu.name}"

    def prior(self) -> ServicePrior:
        """The roofline prior in this engine's time: scaled like its steps."""
        p = self.roofline.prior()
        k = self.time_scale
        return replace(p, fixed_s=p.fixed_s * k, prefill_s_per_token=p.prefill_s_per_token * k,
                       decode_s_per_step=p.decode_s_per_step * k,
                       kv_s_per_token=p.kv_s_per_token * k)

    def count_tokens(self, prompt: str) -> int:
        return max(1, math.ceil(len(prompt) / CHARS_PER_TOKEN))

    async def step(self, batch: list[Sequence], max_steps: int) -> int:
        # A sequence run again after a preemption recomputes what it had generated, too.
        model_s = sum(self.roofline.prefill_s(s.num_prompt_tokens + s.num_generated)
                      for s in batch if not s.prefilled)
        for s in batch:
            s.prefilled = True
        live = [s for s in batch if not s.done]
        one_step_s = self.roofline.decode_step_s(
            [s.num_prompt_tokens + s.num_generated for s in live]) if live else 0.0
        steps = 0
        if live:
            wanted = max(1, math.ceil(self.min_sleep_s / (one_step_s * self.time_scale)))
            steps = min(max_steps, wanted, min(s.remaining for s in live))
            # Each step adds one token of KV cache per sequence, so step i of the chunk is
            # longer than the first by i times that: the sum is exact, not the first step x n.
            growth_s = (len(live) * self.roofline.model.kv_bytes_per_token
                        / self.roofline.mem_bandwidth_bytes_s())
            model_s += steps * one_step_s + growth_s * steps * (steps - 1) / 2
            for s in live:
                s.num_generated += steps
        self.busy_model_s += model_s
        await asyncio.sleep(model_s * self.speed * self.time_scale)
        return steps

    def text(self, seq: Sequence) -> str:
        return (f"[simulated {self.label}] {seq.num_generated} tokens for a "
                f"{seq.num_prompt_tokens}-token prompt")
