"""altlas's static batching from before issue 20, kept here ONLY as the bench's baseline.

Issue 20 asks for tokens/s "at least 1.5x altlas's static batching of today";
that code (``models/llama_batch.py``, removed in cb1f404, and its caller in
``models/llama.py`` before 4430007) is gone from the package and must stay
gone. This is its decode loop, vendored for ``bench/llm_peers.py``: nothing in
``altlas`` imports it.

What the old lane did, and what this keeps:
- up to ``n_seq`` queued requests decode together in one context, one KV
  stream per sequence (``kv_unified`` off), the binding's own sampler chain;
- every prompt is evaluated first, packed into as few ``llama_decode`` calls
  as ``n_batch`` allows, then all sequences advance one token per step;
- the batch runs until its longest sequence ends; requests that arrive
  meanwhile wait for the whole batch; no prefix is reused.

One fix: the old prefill sampled every sequence after the last prompt chunk,
reading logits a later chunk had replaced (this llama.cpp asserts on it once
the prompts span more than one ``n_batch``); here each sequence samples right
after the chunk that holds its last prompt token.

Two simplifications, both in the baseline's favour or neutral: a lone request
goes through the same decoder (the old lane used ``Llama``'s own one-sequence
path), and time to first token is when the first token was sampled. The old
lane did not stream batched requests: their callers saw nothing until the
batch ended, so the real figure was worse.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from altlas.models.llama_text import Sampling, TextAssembler


@dataclass(eq=False)
class StaticItem:
    """One sequence of a static batch and what the bench reads back."""

    tokens: list[int]
    sampling: Sampling
    max_tokens: int  # already clamped to the context
    future: Future[StaticItem] = field(default_factory=Future)
    sampler: Any = None
    text: TextAssembler = field(default_factory=lambda: TextAssembler(()))
    produced: int = 0
    logits_at: int = -1
    next_token: int = 0
    done: bool = False
    first_token: float = 0.0  # perf_counter() of the first sampled token


class StaticBatcher:
    """The old ``BatchDecoder``: one context, one KV stream per sequence, run to the longest end."""

    def __init__(self, llm: llama_cpp.Llama, n_seq: int, n_ctx_seq: int, n_batch: int) -> None:
        self.llm = llm
        self.n_seq = n_seq
        self.n_batch = n_batch
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = n_ctx_seq * n_seq
        params.n_seq_max = n_seq
        params.n_batch = params.n_ubatch = n_batch  # the old Llama had n_ctx >= n_batch
        params.kv_unified = False
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the static-batching context")
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def close(self) -> None:
        """Free the context and the batch buffer."""
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)

    def run(self, items: list[StaticItem]) -> None:
        """Generate every item to its end; all sequences advance one token per step."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        for item in items:
            s = item.sampling
            self.llm.set_seed(s.seed if s.seed is not None else 0)
            item.sampler = self.llm._init_sampler(
                top_k=s.top_k,
                top_p=s.top_p,
                min_p=s.min_p,
                temp=s.temperature,
                repeat_penalty=s.repeat_penalty,
            )
            item.text = TextAssembler(s.stop)
        try:
            self._prefill(items)
            while live := [(seq, item) for seq, item in enumerate(items) if not item.done]:
                self._decode(
                    [(seq, len(it.tokens) + it.produced - 1, it.next_token, True) for seq, it in live]
                )
                for i, (_, item) in enumerate(live):
                    item.logits_at = i
                    self._sample(item)
        finally:
            for item in items:
                item.sampler = None

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for i, (seq, pos, token, logits) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(entries)
        if (status := llama_cpp.llama_decode(self.ctx, b)) != 0:
            raise RuntimeError(f"llama_decode failed with status {status} in static batching")

    def _prefill(self, items: list[StaticItem]) -> None:
        pending = [
            (seq, pos, token, pos == len(item.tokens) - 1)
            for seq, item in enumerate(items)
            for pos, token in enumerate(item.tokens)
        ]
        for start in range(0, len(pending), self.n_batch):
            chunk = pending[start : start + self.n_batch]
            self._decode(chunk)
            for i, (seq, _, _, last) in enumerate(chunk):
                if last:  # sampled now: the next chunk's decode replaces these logits
                    items[seq].logits_at = i
                    self._sample(items[seq])

    def _sample(self, item: StaticItem) -> None:
        token = llama_cpp.llama_sampler_sample(item.sampler.sampler, self.ctx, item.logits_at)
        item.first_token = item.first_token or time.perf_counter()
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            item.done = True
            return
        item.produced += 1
        if item.text.feed(self.llm.detokenize([token])) or item.produced >= item.max_tokens:
            item.done = True
        item.next_token = token


class StaticLane:
    """The old lane's shape: when the decoder is free, every waiting request (up to n_seq) goes in."""

    def __init__(self, batcher: StaticBatcher) -> None:
        self.batcher = batcher
        self.waiting: queue.Queue[StaticItem | None] = queue.Queue()
        self.batches: list[int] = []  # sizes, to show how full the static batches were
        self._thread = threading.Thread(target=self._loop, name="static-batching", daemon=True)
        self._thread.start()

    def submit(self, item: StaticItem) -> asyncio.Future[StaticItem]:
        """Queue one request; the returned future resolves when its whole batch has ended."""
        self.waiting.put(item)
        return asyncio.wrap_future(item.future)

    def close(self) -> None:
        """Stop the thread (its llama.cpp threads go with it), then free the context."""
        self.waiting.put(None)
        self._thread.join()
        self.batcher.close()

    def _loop(self) -> None:
        while (first := self.waiting.get()) is not None:
            group = [first]
            while len(group) < self.batcher.n_seq and not self.waiting.empty():
                nxt = self.waiting.get()
                if nxt is None:
                    self.waiting.put(None)
                    break
                group.append(nxt)
            self.batches.append(len(group))
            try:
                self.batcher.run(group)
            except Exception as exc:  # every item of the batch fails, as in the old lane
                for item in group:
                    item.future.set_exception(exc)
                continue
            for item in group:
                item.future.set_result(item)
