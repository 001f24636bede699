"""Batched decoding: several sequences generated together in one llama.cpp context.

llama-cpp-python's ``Llama`` decodes one sequence at a time; llama.cpp itself
can decode a token of every sequence in one ``llama_decode`` call, reading the
weights once per step instead of once per sequence, which is where CPU (and
GPU) decoding spends its time. This drives a second context of the same
(memory-mapped) model through the binding's low-level API: each sequence has
its own seq id, its own slice of the KV cache and its own sampler chain, built
exactly as ``Llama`` builds it, so seeds, grammars and penalties mean the same
thing as in the one-at-a-time path.

The context copies the single-sequence context's settings (flash attention
off included: with it on, the two paths round differently), and the tests
check that batched and one-at-a-time decoding give the same texts, greedy and
seeded. ``params.batch_sequences`` sizes it (default 4; 1 turns it off); each
sequence gets a full ``n_ctx`` of KV cache, so it costs ``batch_sequences``
times one context's KV memory.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import LlamaGrammar

from altlas.models.errors import GenerationCancelled, InferenceError
from altlas.models.llama_text import GenerationResult, Sampling, TextAssembler


@dataclass
class BatchItem:
    """One sequence of a batch: its prompt tokens, sampling and (checked) grammar."""

    tokens: list[int]
    sampling: Sampling
    grammar: LlamaGrammar | None
    max_tokens: int  # already clamped to the context
    deadline: float | None = None  # time.monotonic() after which the sequence leaves the batch
    # state while decoding
    sampler: Any = None
    text: TextAssembler = field(default_factory=lambda: TextAssembler(()))
    produced: int = 0
    finish: str = "length"
    logits_at: int = -1  # index of this sequence's logits in the last decoded batch
    next_token: int | None = None
    done: bool = False


class BatchDecoder:
    """A context with one KV slice per sequence, next to a ``Llama`` of the same model."""

    def __init__(self, llm: llama_cpp.Llama, n_seq: int, n_ctx_seq: int, n_batch: int) -> None:
        self.llm = llm
        self.n_seq = n_seq
        self.n_batch = n_batch
        # The single-sequence context's settings (threads, flash attention, KV types...), widened.
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = n_ctx_seq * n_seq  # every sequence gets the full per-request context
        params.n_seq_max = n_seq
        params.kv_unified = False
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise InferenceError("llama.cpp could not create a batched-decoding context")
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def close(self) -> None:
        """Free the context and the batch buffer."""
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """Decode (seq, pos, token, want_logits) entries; at most n_batch of them."""
        b = self.batch
        for i, (seq, pos, token, logits) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(entries)
        status = llama_cpp.llama_decode(self.ctx, b)
        if status != 0:
            raise InferenceError(f"llama_decode failed with status {status} in batched decoding")

    def run(self, items: Sequence[BatchItem]) -> list[GenerationResult | GenerationCancelled]:
        """Generate every item to its end; all sequences advance one token per step."""
        if len(items) > self.n_seq:
            raise ValueError(f"{len(items)} sequences for a context of {self.n_seq}")
        started = time.perf_counter()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        for item in items:
            s = item.sampling
            self.llm.set_seed(s.seed if s.seed is not None else random.SystemRandom().randrange(2**32))
            # The binding's own chain builder, so sampling means what it means unbatched.
            item.sampler = self.llm._init_sampler(
                top_k=s.top_k,
                top_p=s.top_p,
                min_p=s.min_p,
                temp=s.temperature,
                repeat_penalty=s.repeat_penalty,
                grammar=item.grammar,
            )
            item.text = TextAssembler(s.stop)
        try:
            self._prefill(items)
            while True:
                now = time.monotonic()
                for item in items:
                    if not item.done and item.deadline is not None and now >= item.deadline:
                        item.done, item.finish = True, "cancelled"  # nobody waits: free its step
                    if not item.done:
                        self._sample(item)
                live = [(seq, item) for seq, item in enumerate(items) if not item.done]
                if not live:
                    break
                entries = [
                    (seq, len(it.tokens) + it.produced - 1, it.next_token or 0, True) for seq, it in live
                ]
                self._decode(entries)
                for i, (_, item) in enumerate(live):
                    item.logits_at = i
        finally:
            for item in items:
                item.sampler = None  # frees the chain
        seconds = time.perf_counter() - started
        return [
            GenerationCancelled(f"stopped after {item.produced} tokens, past the request's time budget")
            if item.finish == "cancelled"
            else GenerationResult(
                text=item.text.text,
                finish_reason=item.finish,
                prompt_tokens=len(item.tokens),
                completion_tokens=item.produced,
                seconds=seconds,
            )
            for item in items
        ]

    def _prefill(self, items: Sequence[BatchItem]) -> None:
        """All prompts, packed into as few decode calls as the batch size allows."""
        pending = [
            (seq, pos, token, pos == len(item.tokens) - 1)
            for seq, item in enumerate(items)
            for pos, token in enumerate(item.tokens)
        ]
        for start in range(0, len(pending), self.n_batch):
            chunk = pending[start : start + self.n_batch]
            self._decode(chunk)
            for i, (seq, _, _, last) in enumerate(chunk):
                if last:
                    items[seq].logits_at = i

    def _sample(self, item: BatchItem) -> None:
        token = llama_cpp.llama_sampler_sample(item.sampler.sampler, self.ctx, item.logits_at)
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            item.finish, item.done = "stop", True
            return
        item.produced += 1
        if item.text.feed(self.llm.detokenize([token])):
            item.finish, item.done = "stop", True
        elif item.produced >= item.max_tokens:
            item.done = True
        item.next_token = token
