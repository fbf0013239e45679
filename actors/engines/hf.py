"""A real transformers engine: batched greedy generation with a KV cache, real tensors.

``HFEngine(model_dir)`` loads a local model directory (``config.json``, weights, tokenizer files)
with ``AutoTokenizer.from_pretrained`` / ``AutoModelForCausalLM.from_pretrained`` and nothing is
ever fetched from a hub (``local_files_only=True``). It is the CPU path of the design: the tests
build a tiny random Llama, save it, and load it through exactly this code.

Continuous batching, the way ``LLMActor`` drives an engine:

- The engine keeps one running batch: a ``DynamicCache`` whose rows are sequences, a 2-D
  attention mask (0 on left padding), each row's next position id and last token.
- A ``step`` first drops rows whose sequence left the batch (finished, aborted, expired), trimming
  columns that are padding in every remaining row.
- New sequences are prefilled together, left-padded to a common length with an attention mask and
  per-row position ids; each gets its first token from the prefill. Their cache is left-padded to
  the running cache's length (or the other way round) and joined to it along the batch axis.
- Otherwise it decodes: one forward of the last token of every row per step, greedy argmax. A row
  stops at its own ``max_new_tokens`` or at an end-of-sequence token (kept in ``token_ids``, counted
  in ``num_generated``, left out of the text). A call returns as soon as a row finishes, after
  ``max_steps`` steps, or after ``max_call_s`` of compute, so new requests join soon.

A call is either a prefill (when new sequences arrive) or a run of decode steps, never both while
other rows are running, so no row gets more than ``max_steps`` tokens in one call. The forward
passes run in a worker thread (``asyncio.to_thread``) so the actor's event loop keeps taking
requests and aborts meanwhile; the thread only touches the engine's own tensors and the results are
applied to the ``Sequence`` objects back on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.engines.base import Sequence
from raysched.core.types import ServicePrior

# Per-call cost that does not scale with tokens: the thread hop and Python around the forward.
CALL_OVERHEAD_S = 1.0e-3
TINY_MODEL_NOTE = ("a TINY RANDOM model: real tensors and real batched generation on CPU, "
                   "but the outputs are gibberish")


def missing() -> str | None:
    """Why the engine cannot run here (a missing package), or None when it can."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return f"the hf engine needs torch and transformers (pip install 'raysched[hf]'): {exc}"
    return None


@dataclass
class _Batch:
    """The running batch as tensors. Row ``i`` belongs to the sequence ``rows[i]``.

    Rows are matched to sequences by identity, not by request id: a task retried on the same
    worker comes back as a new ``Sequence`` with the same id and must start afresh.
    """

    rows: list[Any] = field(default_factory=list)
    cache: Any = None  # transformers DynamicCache
    mask: Any = None  # LongTensor [B, L]: 1 on real tokens, 0 on left padding
    pos: Any = None  # LongTensor [B]: the position id of each row's next token
    last: Any = None  # LongTensor [B]: each row's last token, the next decode input

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class _RowPlan:
    seq: Sequence  # read-only in the worker thread
    remaining: int  # tokens this row may still produce
    prompt_ids: list[int] | None = None  # set for rows that need a prefill


@dataclass
class _CallResult:
    tokens: dict[int, list[int]]  # id(seq) -> new tokens
    eos: set[int]
    prefilled: set[int]
    steps: int


class HFEngine:
    """Greedy batched generation with a transformers causal LM on a local model directory."""

    simulated = False
    resumes = True  # its prompt ids are the prompt's and the tokens so far (``_prompt_ids``)

    def __init__(self, model: str, *, device: str | None = None, dtype: str | None = None,
                 num_threads: int | None = None, max_call_s: float = 0.05,
                 calibrate: bool = True, eos_token_ids: list[int] | None = None) -> None:
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        import torch
        import transformers

        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"the hf engine loads a local model directory with a config.json; "
                             f"{str(path)!r} is not one (nothing is downloaded from a hub)")
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self._torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = getattr(torch, dtype) if dtype else (
            torch.float32 if self.device.type == "cpu" else torch.bfloat16)
        self.model_dir = str(path)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=torch_dtype).to(self.device).eval()
        cfg = self.model.config
        if num_threads is None:
            # Intra-op threads pay off only for wide layers: a tiny model runs 10-50x slower with
            # two threads than with one on a busy 2-core machine (measured: 0.6 ms vs 40 ms a
            # decode step). One thread per 512 hidden units, at most what torch would use.
            hidden = int(getattr(cfg, "hidden_size", 512))
            num_threads = max(1, min(torch.get_num_threads(), hidden // 512))
        torch.set_num_threads(num_threads)
        self.num_threads = num_threads
        self.name = "hf"
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.max_context_tokens = int(getattr(cfg, "max_position_embeddings", 2048))
        self.max_call_s = max_call_s
        if eos_token_ids is None:
            eos = self.model.generation_config.eos_token_id
            if eos is None:
                eos = (cfg.eos_token_id if cfg.eos_token_id is not None
                       else self.tokenizer.eos_token_id)
            eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.eos_token_ids = frozenset(int(e) for e in eos_token_ids)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos_token_ids, default=0))
        self._batch = _Batch()
        self.forward_s = 0.0  # compute time spent in forwards, for telemetry
        self.label = (f"{getattr(cfg, 'model_type', 'model')} {self.num_params / 1e6:.2f}M params "
                      f"({Path(self.model_dir).name}) on {self.device.type}, torch "
                      f"{torch.__version__}, {str(torch_dtype).replace('torch.', '')}")
        self._prior = self._calibrate() if calibrate else self._nominal_prior()

    # -- the Engine protocol ---------------------------------------------------------------

    def prior(self) -> ServicePrior:
        return self._prior

    def count_tokens(self, prompt: str) -> int:
        return max(1, len(self._encode(prompt)))

    def text(self, seq: Sequence) -> str:
        return str(self.tokenizer.decode(seq.token_ids, skip_special_tokens=True))

    async def step(self, batch: list[Sequence], max_steps: int) -> int:
        live = [s for s in batch if not s.done]
        plans = []
        known = {id(s) for s in self._batch.rows}
        for s in live:
            plan = _RowPlan(s, s.remaining)
            if id(s) not in known:
                plan.prompt_ids = self._prompt_ids(s)
            plans.append(plan)
        if not plans:
            self._batch = _Batch()
            return 0
        result = await asyncio.to_thread(self._run, plans, max(1, max_steps))
        for s in live:
            if s.done:  # aborted while the forward ran: its request already ended
                continue
            if id(s) in result.prefilled:
                s.prefilled = True
            new = result.tokens.get(id(s), [])
            s.token_ids.extend(new)
            s.num_generated += len(new)
            if id(s) in result.eos:
                s.finished_early = True
        return result.steps

    # -- internals -------------------------------------------------------------------------

    def _encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def _prompt_ids(self, seq: Sequence) -> list[int]:
        ids = self._encode(seq.prompt) or [self.pad_token_id]
        # Keep the end of an over-long prompt so prompt + output fits the context.
        room = max(1, self.max_context_tokens - seq.max_new_tokens)
        # A sequence this engine has no row for but that already has tokens (its row was lost)
        # resumes where it stopped: its tokens so far are prefilled with the prompt.
        return ids[-room:] + list(seq.token_ids)

    def _run(self, plans: list[_RowPlan], max_steps: int) -> _CallResult:
        """One call's forwards (runs in a worker thread)."""
        torch = self._torch
        t0 = time.perf_counter()
        with torch.inference_mode():
            result = self._run_locked(plans, max_steps, t0)
        self.forward_s += time.perf_counter() - t0
        return result

    def _run_locked(self, plans: list[_RowPlan], max_steps: int, t0: float) -> _CallResult:
        tokens: dict[int, list[int]] = {id(p.seq): [] for p in plans}
        eos: set[int] = set()
        remaining = {id(p.seq): p.remaining for p in plans}
        self._keep(set(remaining))
        new = [p for p in plans if p.prompt_ids is not None]
        prefilled = {id(p.seq) for p in new}
        steps = 0
        if new:
            had_rows = len(self._batch) > 0
            first = self._prefill([p.prompt_ids for p in new if p.prompt_ids is not None],
                                  [p.seq for p in new])
            for p, tok in zip(new, first, strict=True):
                tokens[id(p.seq)].append(tok)
                remaining[id(p.seq)] -= 1
                if tok in self.eos_token_ids:
                    eos.add(id(p.seq))
            steps = 1
            # Running rows got nothing from this call: hand back before decoding further.
            if had_rows or self._any_finished(remaining, eos) or max_steps <= 1:
                return _CallResult(tokens, eos, prefilled, steps)
        while steps < max_steps and not self._any_finished(remaining, eos):
            nxt = self._decode()
            for row, tok in zip(self._batch.rows, nxt, strict=True):
                tokens[id(row)].append(tok)
                remaining[id(row)] -= 1
                if tok in self.eos_token_ids:
                    eos.add(id(row))
            steps += 1
            if time.perf_counter() - t0 >= self.max_call_s:
                break
        return _CallResult(tokens, eos, prefilled, steps)

    @staticmethod
    def _any_finished(remaining: dict[int, int], eos: set[int]) -> bool:
        return bool(eos) or any(r <= 0 for r in remaining.values())

    def _keep(self, wanted: set[int]) -> None:
        """Drop rows whose sequence left the batch; trim columns that are padding in every row."""
        b = self._batch
        if not b.rows:
            return
        keep = [i for i, row in enumerate(b.rows) if id(row) in wanted]
        if len(keep) == len(b.rows):
            return
        if not keep:
            self._batch = _Batch()
            return
        torch = self._torch
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = b.mask.index_select(0, idx)
        # Columns before the first real token of every remaining row are dead weight.
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        for layer in self._layers(b.cache):
            layer.keys = layer.keys.index_select(0, idx)[:, :, start:, :]
            layer.values = layer.values.index_select(0, idx)[:, :, start:, :]
        self._batch = _Batch([b.rows[i] for i in keep], b.cache, mask[:, start:],
                             b.pos.index_select(0, idx), b.last.index_select(0, idx))

    def _layers(self, cache: Any) -> list[Any]:
        from transformers.cache_utils import DynamicLayer

        layers = list(cache.layers)
        for layer in layers:
            if type(layer) is not DynamicLayer:
                raise ValueError(
                    f"the hf engine joins and splits full-attention caches only; this model uses "
                    f"{type(layer).__name__}")
        return layers

    def _prefill(self, prompts: list[list[int]], rows: list[Any]) -> list[int]:
        """Prefill ``prompts`` as one left-padded batch and join it to the running batch."""
        torch = self._torch
        import transformers

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = transformers.DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        first = out.logits[:, -1, :].argmax(dim=-1)
        new = _Batch(list(rows), cache, mask, mask.sum(dim=-1), first)
        self._batch = new if not self._batch.rows else self._join(self._batch, new)
        return [int(t) for t in first.tolist()]

    def _join(self, a: _Batch, b: _Batch) -> _Batch:
        """Stack two batches, left-padding the shorter cache with masked zeros."""
        torch = self._torch
        la, lb = a.mask.shape[1], b.mask.shape[1]
        width = max(la, lb)

        def lpad(t: Any, length: int, dim: int) -> Any:
            if length == width:
                return t
            shape = list(t.shape)
            shape[dim] = width - length
            return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)

        for layer_a, layer_b in zip(self._layers(a.cache), self._layers(b.cache), strict=True):
            layer_a.keys = torch.cat([lpad(layer_a.keys, la, 2), lpad(layer_b.keys, lb, 2)], 0)
            layer_a.values = torch.cat([lpad(layer_a.values, la, 2),
                                        lpad(layer_b.values, lb, 2)], 0)
        return _Batch(a.rows + b.rows, a.cache,
                      torch.cat([lpad(a.mask, la, 1), lpad(b.mask, lb, 1)], 0),
                      torch.cat([a.pos, b.pos]), torch.cat([a.last, b.last]))

    def _decode(self) -> list[int]:
        """One decode step for every row of the running batch."""
        torch = self._torch
        b = self._batch
        mask = torch.cat([b.mask, torch.ones((len(b), 1), dtype=b.mask.dtype,
                                             device=self.device)], dim=1)
        out = self.model(input_ids=b.last[:, None], attention_mask=mask,
                         position_ids=b.pos[:, None], past_key_values=b.cache, use_cache=True,
                         logits_to_keep=1)
        nxt = out.logits[:, -1, :].argmax(dim=-1)
        b.mask, b.pos, b.last = mask, b.pos + 1, nxt
        return [int(t) for t in nxt.tolist()]

    # -- the service prior -----------------------------------------------------------------

    def _nominal_prior(self) -> ServicePrior:
        # Decoding reads every weight once a step; assume 10 GB/s of effective CPU bandwidth.
        weight_bytes = self.num_params * self.model.dtype.itemsize
        decode_s = CALL_OVERHEAD_S + weight_bytes / 10e9
        return ServicePrior(fixed_s=CALL_OVERHEAD_S, prefill_s_per_token=decode_s / 8,
                            decode_s_per_step=decode_s, batch_slowdown=0.1)

    def _calibrate(self, prompt_tokens: int = 64, steps: int = 8) -> ServicePrior:
        """Measure prefill and decode on this node with the loaded model (a few forwards)."""
        torch = self._torch
        prompt_tokens = max(1, min(prompt_tokens, self.max_context_tokens // 2))
        vocab = int(self.model.config.vocab_size)
        gen = torch.Generator().manual_seed(0)
        saved = self._batch

        def run(batch: int) -> tuple[float, float]:
            self._batch = _Batch()
            prompts = torch.randint(0, vocab, (batch, prompt_tokens), generator=gen).tolist()
            t0 = time.perf_counter()
            self._prefill(prompts, [object() for _ in range(batch)])
            t1 = time.perf_counter()
            for _ in range(steps):
                self._decode()
            return t1 - t0, (time.perf_counter() - t1) / steps

        try:
            with torch.inference_mode():
                run(1)  # warm-up: first forwards pay one-time costs
                prefill_s, one = run(1)
                _, four = run(4)
        finally:
            self._batch = saved
        slowdown = max(0.0, (four / one - 1.0) / 3.0) if one > 0 else 0.0
        return ServicePrior(fixed_s=CALL_OVERHEAD_S, prefill_s_per_token=prefill_s / prompt_tokens,
                            decode_s_per_step=one, batch_slowdown=slowdown)


# -- a tiny random model, for tests and the demo --------------------------------------------

_WORDS = (
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "with", "by", "from", "at",
    "as", "is", "are", "was", "be", "this", "that", "it", "its", "summary", "summarize",
    "summarization", "reason", "reasoning", "agent", "step", "task", "risk", "trade", "price",
    "market", "bank", "loan", "rate", "fund", "stock", "bond", "cash", "loss", "gain", "fraud",
    "card", "account", "client", "report", "quarter", "revenue", "margin", "cost", "growth",
    "yield", "credit", "debit", "limit", "order", "hedge",
)


def build_tiny_tokenizer(vocab_size: int = 1000) -> Any:
    """A word-level tokenizer built offline: words split into pieces of at most four characters.

    Four characters a token matches the scheduler's estimate (``CHARS_PER_TOKEN``). The vocabulary
    is special tokens, every printable ASCII character, runs of ``x`` (the demo's filler text),
    pieces of a few domain words, then two-letter pairs until ``vocab_size``.
    """
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}

    def add(piece: str) -> None:
        if piece not in vocab and len(vocab) < vocab_size:
            vocab[piece] = len(vocab)

    for special in ("<pad>", "<s>", "</s>", "<unk>"):
        add(special)
    for ch in string.ascii_letters + string.digits + string.punctuation:
        add(ch)
    for run in ("xxxx", "xxx", "xx"):
        add(run)
    for word in _WORDS:
        for i in range(0, len(word), 4):
            add(word[i:i + 4])
    letters = string.ascii_lowercase
    for a in letters:
        for b in letters:
            add(a + b)
    n = 0
    while len(vocab) < vocab_size:  # pad the vocabulary with three-letter pieces
        add(letters[n // 676 % 26] + letters[n // 26 % 26] + letters[n % 26])
        n += 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Whitespace(),
        pre_tokenizers.Split(Regex(".{1,4}"), behavior="isolated"),
    ])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins pieces with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def build_tiny_model(path: str | os.PathLike[str], *, seed: int = 0, vocab_size: int = 1000,
                     hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     num_kv_heads: int = 2, intermediate_size: int = 128,
                     max_position_embeddings: int = 4096) -> Path:
    """Save a tiny random Llama and its tokenizer to ``path``: a model directory like any other.

    Random weights from a fixed seed: real tensors, real generation, gibberish text.
    """
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(vocab_size)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Name the class every transformers version knows (v5 writes its new "TokenizersBackend"),
    # so other loaders of the directory (vLLM pins its own transformers) read it too.
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(tok_cfg, indent=2))
    return out


__all__ = ["TINY_MODEL_NOTE", "HFEngine", "build_tiny_model", "build_tiny_tokenizer", "missing"]
