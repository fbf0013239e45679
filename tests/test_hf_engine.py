"""The transformers engine on a tiny random Llama the tests build, save and load from disk.

The model (2 layers, hidden 64, vocabulary 1,000, fixed seed) and its tokenizer (a ``tokenizers``
WordLevel model wrapped in ``PreTrainedTokenizerFast``) are made here, offline, and saved with
``save_pretrained``; the engine loads the directory with the code that loads a real model.
"""

from __future__ import annotations

import asyncio
import string
import uuid

import pytest

torch = pytest.importorskip("torch", reason="the hf engine needs torch (pip install '.[hf]')",
                            exc_type=ImportError)
transformers = pytest.importorskip(
    "transformers", reason="the hf engine needs transformers (pip install '.[hf]')",
    exc_type=ImportError)

from actors.engines import make_engine, real_engines_available  # noqa: E402 - after the skips
from actors.engines.base import Sequence  # noqa: E402
from actors.engines.hf import HFEngine, build_tiny_model  # noqa: E402

PROMPTS = [
    "the market risk report",
    "fraud card account client",
    "a",
    "summarize the quarter revenue margin and cost growth for the bank " * 3,
    "hedge fund order",
]


def _tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>"])}
    for piece in list(string.ascii_lowercase) + ["xxxx", "the", "risk", "bank", "fund"]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex(".{1,4}"), behavior="isolated")])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = _tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(1234)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(model_dir):
    return HFEngine(str(model_dir))


def _seqs(engine, specs):
    return [Sequence(f"r{i}", p, engine.count_tokens(p), n) for i, (p, n) in enumerate(specs)]


def _run(engine, seqs, max_steps=1 << 30):
    async def go():
        calls = 0
        while any(not s.done for s in seqs):
            await engine.step(seqs, max_steps)
            calls += 1
            assert calls < 10_000
        await engine.step(seqs, max_steps)  # lets the engine drop finished rows
    asyncio.run(go())
    return seqs


def _alone(engine, prompt, n):
    return _run(engine, _seqs(engine, [(prompt, n)]))[0].token_ids


def test_loads_a_saved_model_directory(engine, model_dir):
    assert engine.name == "hf" and engine.simulated is False
    assert engine.max_context_tokens == 512
    assert engine.eos_token_ids == {2}  # from the saved config, not hard-coded
    assert engine.count_tokens("the market") == len(
        transformers.AutoTokenizer.from_pretrained(model_dir)("the market")["input_ids"])
    prior = engine.prior()  # measured on this machine at load
    assert prior.decode_s_per_step > 0 and prior.prefill_s_per_token > 0
    assert "llama" in engine.label and "cpu" in engine.label


def test_matches_transformers_generate(engine, model_dir):
    """Our cache bookkeeping gives what transformers' own greedy generate gives."""
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        ref = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert _alone(engine, PROMPTS[1], 10) == ref


def test_batched_greedy_equals_unbatched(engine):
    specs = [(p, 6 + 3 * i) for i, p in enumerate(PROMPTS)]
    alone = [_alone(engine, p, n) for p, n in specs]
    together = _run(engine, _seqs(engine, specs))
    assert [s.token_ids for s in together] == alone
    # Different prompt lengths mean real left padding: the longest is 4x the shortest.
    lengths = [s.num_prompt_tokens for s in together]
    assert max(lengths) >= 4 * min(lengths)


def test_sequences_join_and_leave_a_running_batch(engine):
    """Continuous batching: joins mid-flight (cache merge) and leaves (row drop) keep outputs."""
    specs = [(PROMPTS[0], 12), (PROMPTS[3], 4), (PROMPTS[2], 9), (PROMPTS[4], 7)]
    alone = [_alone(engine, p, n) for p, n in specs]
    seqs = _seqs(engine, specs)

    async def go():
        batch = seqs[:1]
        for _ in range(3):  # the first sequence runs alone for a few steps
            await engine.step(batch, 1)
        batch = seqs[:3]  # two join, one of them longer than what is cached
        while not seqs[1].done:
            await engine.step(batch, 1)
        batch = seqs  # the last one joins after one has left
        while any(not s.done for s in batch):
            await engine.step(batch, 1 << 30)
    asyncio.run(go())
    assert [s.token_ids for s in seqs] == alone


def test_a_sequence_resumes_on_an_engine_without_its_cache(engine, model_dir):
    """A sequence whose cache row is gone (a fresh engine) continues where it stopped."""
    (s,) = _seqs(engine, [(PROMPTS[3], 10)])

    async def first_part():
        while s.num_generated < 4:
            await engine.step([s], 1)
    asyncio.run(first_part())
    fresh = HFEngine(str(model_dir), calibrate=False)
    _run(fresh, [s])
    assert s.token_ids == _alone(engine, PROMPTS[3], 10)


def test_per_request_max_new_tokens(engine):
    seqs = _seqs(engine, [(PROMPTS[0], 1), (PROMPTS[1], 3), (PROMPTS[3], 7), (PROMPTS[4], 16)])

    async def go():
        while any(not s.done for s in seqs):
            before = [s.num_generated for s in seqs]
            steps = await engine.step(seqs, 4)
            assert 1 <= steps <= 4
            for s, b in zip(seqs, before, strict=True):
                assert s.num_generated - b <= 4  # never more than max_steps in one call
                assert s.num_generated <= s.max_new_tokens
    asyncio.run(go())
    assert [s.num_generated for s in seqs] == [1, 3, 7, 16]
    assert [len(s.token_ids) for s in seqs] == [1, 3, 7, 16]
    assert not any(s.finished_early for s in seqs)


def test_each_sequence_stops_at_its_own_eos(engine, model_dir):
    out = _alone(engine, PROMPTS[0], 8)
    stop_at = next(i for i in range(1, 8) if out[i] not in out[:i])
    eos = out[stop_at]
    stopping = HFEngine(str(model_dir), eos_token_ids=[eos], calibrate=False)
    specs = [(PROMPTS[0], 8), (PROMPTS[4], 8), (PROMPTS[3], 8)]
    alone = [_alone(stopping, p, n) for p, n in specs]
    seqs = _run(stopping, _seqs(stopping, specs))
    assert seqs[0].token_ids == out[:stop_at + 1]  # the end-of-sequence token is kept in ids
    assert seqs[0].finished_early and seqs[0].num_generated == stop_at + 1
    assert [s.token_ids for s in seqs] == alone  # the others run on to their own end
    for s in seqs[1:]:
        assert s.finished_early == (eos in s.token_ids)
        assert s.num_generated == (s.token_ids.index(eos) + 1 if eos in s.token_ids else 8)


def test_registry_builds_the_hf_engine(model_dir):
    assert "hf" in real_engines_available()
    e = make_engine("hf", str(model_dir), time_scale=0.5, calibrate=False)
    assert isinstance(e, HFEngine)
    with pytest.raises(ValueError, match="local model directory"):
        make_engine("hf", str(model_dir / "missing"))


def test_tiny_model_builder_roundtrip(tmp_path):
    """The demo's model: built, saved, loaded like any directory; its tokens are ~4 chars."""
    path = build_tiny_model(tmp_path / "demo-model", seed=3)
    e = HFEngine(str(path), calibrate=False)
    prompt = "[summarization] " + "x" * 400
    assert 100 <= e.count_tokens(prompt) <= 110
    (s,) = _run(e, _seqs(e, [(prompt, 5)]))
    assert s.num_generated == 5 and isinstance(e.text(s), str)


@pytest.mark.ray
def test_a_request_taken_back_goes_on_from_its_tokens(model_dir, engine):
    """Preemption with its progress: run again with the token ids an earlier attempt
    generated (``WorkItem.progress``), the actor's engine prefills the prompt and those tokens
    and generates only the rest; greedy, the output is the one an uninterrupted run gives."""
    from actors.llm_actor import LLMActor
    from raysched.core.protocol import WorkItem, WorkPayload

    prompt, budget, done = PROMPTS[0], 12, 5
    whole = _alone(engine, prompt, budget)
    actor = LLMActor("hf-0", "llm-7b", engine="hf", model=str(model_dir), max_batch_size=2,
                     max_wait_ms=0)

    async def go():
        gen = actor.execute([WorkItem("t0", "summarization", 4, 1e18,
                                      WorkPayload(prompt=prompt, max_new_tokens=budget),
                                      progress=(tuple(whole[:done]), done))])
        (c,) = await gen.__anext__()
        return c

    c = asyncio.run(go())
    (s,) = _seqs(engine, [(prompt, budget)])
    s.token_ids = whole
    assert c.ok and c.output == engine.text(s)
    # This attempt's work: the prompt and the 5 tokens prefilled, the rest generated.
    assert c.num_prompt_tokens == engine.count_tokens(prompt) + done
    assert c.num_generated_tokens == len(whole) - done


def test_llm_actor_runs_the_hf_engine_on_ray(ray_session, model_dir, engine):
    import ray

    from actors.llm_actor import LLMActor
    from raysched.core.protocol import WorkItem, WorkPayload

    actor = ray.remote(LLMActor).options(num_cpus=0.5).remote(
        "hf-0", "llm-7b", engine="hf", model=str(model_dir), max_batch_size=4, max_wait_ms=5)
    try:
        info = ray.get(actor.info.remote())
        assert info.engine == "hf" and info.simulated is False
        assert info.max_context_tokens == 512
        specs = [(PROMPTS[i], 5 + i) for i in range(4)]
        items = [WorkItem(f"t{i}", "summarization", 2, 1e18,
                          WorkPayload(prompt=p, max_new_tokens=n))
                 for i, (p, n) in enumerate(specs)]

        async def collect():
            out = []
            async for ref in actor.execute.remote(items):
                out.extend(await ref)
            return out
        completions = {c.task_id: c for c in asyncio.run(collect())}
        assert len(completions) == 4
        for i, (p, n) in enumerate(specs):
            c = completions[f"t{i}"]
            assert c.ok and c.num_generated_tokens == n and c.worker_id == "hf-0"
            s = _seqs(engine, [(p, n)])[0]
            s.token_ids = _alone(engine, p, n)
            assert c.output == engine.text(s)  # same tokens in the actor's process
        assert max(c.batch_size for c in completions.values()) > 1  # they really shared a batch
    finally:
        ray.kill(actor)


@pytest.mark.ray
def test_scheduler_runs_a_pool_on_the_hf_engine(ray_session, model_dir):
    import ray

    import raysched
    from raysched import PoolConfig, SchedulerConfig

    config = SchedulerConfig(name=f"sched-hf-{uuid.uuid4().hex[:8]}", pools=[
        PoolConfig(name="llm-7b", kind="llm", engine="hf", model=str(model_dir), replicas=1,
                   max_batch_size=4, num_cpus=0.5)])
    client = raysched.connect(config=config)
    try:
        stats = client.stats()
        (worker,) = stats["workers"].values()
        assert worker["engine"] == "hf" and worker["simulated"] is False
        tasks = [{"kind": "summarization", "priority": "HIGH", "sla_ms": 60_000,
                  "payload": {"prompt": PROMPTS[i % len(PROMPTS)], "max_new_tokens": 4 + i}}
                 for i in range(6)]
        results = list(client.map(tasks, timeout=60))
        assert all(r.status.value == "completed" for r in results), results
        assert all(isinstance(r.output, str) for r in results)
    finally:
        client.close()
        ray.kill(client.actor)
