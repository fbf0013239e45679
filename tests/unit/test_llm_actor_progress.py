"""An LLM actor taken back mid-generation reports its progress, and goes on from it."""

from __future__ import annotations

import asyncio

from actors.llm_actor import LLMActor
from raysched.core.protocol import WorkItem, WorkPayload

PROMPT = "x" * 2_000  # 500 tokens on the simulated engine


def _item(progress: tuple[tuple[int, ...], int] | None = None) -> WorkItem:
    return WorkItem("t0", "agent", 4, 1e18, WorkPayload(prompt=PROMPT, max_new_tokens=1_500),
                    progress=progress)


def test_the_simulated_engine_reports_its_count_and_goes_on_from_it() -> None:
    actor = LLMActor("llm-0", "llm-7b", engine="sim", max_batch_size=1, max_wait_ms=0,
                     time_scale=0.05)

    async def go():
        first = asyncio.ensure_future(actor.execute([_item()]).__anext__())
        await asyncio.sleep(0.1)  # about 2 s of simulated generation
        assert await actor.abort(["t0"]) == 1
        (aborted,) = await first
        again = actor.execute([_item(((), aborted.num_generated_tokens))])
        (done,) = await again.__anext__()
        return aborted, done

    aborted, done = asyncio.run(go())
    assert not aborted.ok and aborted.error == "aborted"
    assert aborted.output == [] and 0 < aborted.num_generated_tokens < 1_500  # no ids: a count
    g = aborted.num_generated_tokens
    assert done.ok and done.num_generated_tokens == 1_500 - g
    assert done.num_prompt_tokens == 500 + g  # its tokens so far prefilled again
    assert "1500 tokens" in done.output  # the whole answer's count, as one run would say


def test_progress_an_engine_cannot_use_is_ignored() -> None:
    # Ids that do not match the count (from an engine with no ids, sent to one that needs
    # them) cannot be decoded: the attempt starts again, and says so by its counts.
    actor = LLMActor("llm-0", "llm-7b", engine="sim", max_batch_size=1, max_wait_ms=0,
                     time_scale=0.001)
    actor.engine.simulated = False  # as a real engine, which needs the ids

    async def go():
        (c,) = await actor.execute([_item(((1, 2), 40))]).__anext__()
        return c

    c = asyncio.run(go())
    assert c.ok and c.num_generated_tokens == 1_500 and c.num_prompt_tokens == 500
