"""The engine protocol the LLM actor batches over.

The actor owns continuous batching: it keeps the running batch, lets new requests join at the
next step and retires finished ones. An engine only knows how to advance a batch: prefill the
sequences that have not started and decode up to ``max_steps`` tokens for every sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from raysched.core.types import ServicePrior


@dataclass(slots=True)
class Sequence:
    """One request inside the running batch."""

    request_id: str
    prompt: str
    num_prompt_tokens: int
    max_new_tokens: int
    priority: int = 3
    prefilled: bool = False
    num_generated: int = 0
    token_ids: list[int] = field(default_factory=list)
    finished_early: bool = False  # the engine saw an end-of-sequence token
    # Set by the engine when this one request failed (the engine and the batch go on): the
    # actor ends it with this message; ``error_retryable`` when another attempt could help.
    error: str = ""
    error_retryable: bool = False

    @property
    def done(self) -> bool:
        return bool(self.error) or self.finished_early or self.num_generated >= self.max_new_tokens

    @property
    def remaining(self) -> int:
        return 0 if self.done else self.max_new_tokens - self.num_generated


class Engine(Protocol):
    name: str
    simulated: bool
    max_context_tokens: int
    # Whether a sequence that arrives with tokens already generated (``num_generated`` and
    # ``token_ids``, a preempted request run again) goes on from them: the engine prefills the
    # prompt followed by those tokens and generates the rest.
    resumes: bool

    def prior(self) -> ServicePrior:
        """Service-time model the scheduler starts from before it has telemetry."""
        ...

    def count_tokens(self, prompt: str) -> int: ...

    async def step(self, batch: list[Sequence], max_steps: int) -> int:
        """Prefill new sequences and decode up to ``max_steps`` tokens for each; return steps run.

        Never decodes a sequence past its ``max_new_tokens``. A failure of one request (the
        engine refused it) sets that sequence's ``error`` and leaves the others running; an
        exception means the engine itself failed, and every request in the batch with it.
        """
        ...

    def text(self, seq: Sequence) -> str:
        """The generated text of a finished sequence."""
        ...
