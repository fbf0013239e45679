"""The roofline model of an LLM on GPUs: decode step and prefill times from first principles.

Decoding is memory-bound: every step reads all weights once plus the KV cache of every sequence
in the batch, so ``step_s = (weight_bytes + kv_bytes) / (bandwidth * mbu)``. Prefill is
compute-bound: ``2 * params * prompt_tokens / (peak_flops * mfu)``. Both the simulated engine
(``actors.engines.simulated``) and the simulator's workers (``raysched.sim``) time their batches
with it, so it lives in the pure core that both import.

Constants and their sources:
- A100-80GB SXM: 2,039 GB/s HBM2e, 312 TFLOPS dense BF16 (NVIDIA A100 datasheet).
- Mistral-7B: 7.24e9 parameters, 32 layers, 8 KV heads of dim 128 (grouped-query attention),
  32k context (Jiang et al., "Mistral 7B", 2023, Table 1).
- Llama-2-70B: 69e9 parameters, 80 layers, 8 KV heads of dim 128, 4k context (Touvron et al.,
  "Llama 2", 2023); served tensor-parallel over 4 GPUs.
- Efficiencies: decode reaches about 60-80% of peak memory bandwidth and prefill about 50% of
  peak FLOPS in well-tuned servers (Yuan et al., "LLM Inference Unveiled: Survey and Roofline
  Model Insights", 2024); we take 0.7 and 0.5. Tensor parallelism loses more to all-reduce; we
  take 0.85 of linear scaling at TP=4 (an assumption, to be calibrated against real runs).
"""

from __future__ import annotations

from dataclasses import dataclass

from raysched.core.types import ServicePrior

BYTES_FP16 = 2
# A per-step cost that does not scale with bytes: kernel launches, sampling, scheduling.
STEP_OVERHEAD_S = 1.0e-3


@dataclass(frozen=True, slots=True)
class GPUSpec:
    name: str
    mem_bandwidth_bytes_s: float
    peak_flops: float


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    num_params: float
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_context_tokens: int

    @property
    def weight_bytes(self) -> float:
        return self.num_params * BYTES_FP16

    @property
    def kv_bytes_per_token(self) -> float:
        # K and V, per layer, per KV head.
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * BYTES_FP16


A100_80GB = GPUSpec("A100-80GB", mem_bandwidth_bytes_s=2.039e12, peak_flops=312e12)
MISTRAL_7B = ModelSpec("Mistral-7B", 7.24e9, 32, 8, 128, 32_768)
LLAMA2_70B = ModelSpec("Llama-2-70B", 69e9, 80, 8, 128, 4_096)


@dataclass(frozen=True, slots=True)
class Roofline:
    """Step and prefill times of ``model`` on ``num_gpus`` x ``gpu``."""

    model: ModelSpec
    gpu: GPUSpec
    num_gpus: int = 1
    mbu: float = 0.7
    mfu: float = 0.5
    tp_efficiency: float = 1.0

    def mem_bandwidth_bytes_s(self) -> float:
        """Effective memory bandwidth of the whole tensor-parallel group."""
        return self.gpu.mem_bandwidth_bytes_s * self.num_gpus * self.mbu * self.tp_efficiency

    @property
    def _flops(self) -> float:
        return self.gpu.peak_flops * self.num_gpus * self.mfu * self.tp_efficiency

    def decode_step_s(self, context_tokens: list[int]) -> float:
        """One decode step for a batch whose sequences hold ``context_tokens`` tokens each."""
        kv = sum(context_tokens) * self.model.kv_bytes_per_token
        return STEP_OVERHEAD_S + (self.model.weight_bytes + kv) / self.mem_bandwidth_bytes_s()

    def prefill_s(self, num_prompt_tokens: int) -> float:
        return 2.0 * self.model.num_params * num_prompt_tokens / self._flops

    def prior(self, typical_context_tokens: int = 1024) -> ServicePrior:
        """The service model the scheduler starts from.

        ``batch_slowdown`` is the extra step time each additional sequence of typical context
        adds, relative to a batch of one; ``kv_s_per_token`` what each token of KV cache in
        the batch adds.
        """
        one = self.decode_step_s([typical_context_tokens])
        two = self.decode_step_s([typical_context_tokens] * 2)
        return ServicePrior(fixed_s=STEP_OVERHEAD_S, prefill_s_per_token=self.prefill_s(1),
                            decode_s_per_step=one, batch_slowdown=(two - one) / one,
                            kv_s_per_token=self.model.kv_bytes_per_token
                            / self.mem_bandwidth_bytes_s(),
                            context_tokens=typical_context_tokens)


PRESETS: dict[str, Roofline] = {
    "7b": Roofline(MISTRAL_7B, A100_80GB, num_gpus=1),
    "70b": Roofline(LLAMA2_70B, A100_80GB, num_gpus=4, tp_efficiency=0.85),
}
