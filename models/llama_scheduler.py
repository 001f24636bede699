"""Continuous batching: one decode loop per llama.cpp context, over N sequence slots.

llama-cpp-python's ``Llama`` decodes one sequence at a time. llama.cpp itself
decodes a token of every sequence in one ``llama_decode`` call, reading the
weights once per step, which is where decoding spends its time. A static batch
wastes that: it runs until its longest sequence ends and newcomers wait for
all of it. Here one thread per context owns the slots and, at every step:

1. stops sequences whose deadline passed or that were cancelled or stopped
   (their slot is free for the next step);
2. lets waiting requests into free slots, first come first served, reusing
   the KV cells of the longest matching prompt prefix held by any slot (see
   ``_admissible`` and ``_place``);
3. decodes one token of every generating sequence (one ``llama_decode``),
   then a chunk of every joining prompt, up to ``n_batch`` tokens in all,
   shared equally (see ``StepRunner._prompt_shares``), so a long prompt never freezes
   the others for more than one step nor holds a short one back;
4. samples every sequence that got logits; finished ones leave at once.

Each slot is its own KV stream (``kv_unified`` off) whose cell i holds
position i, exactly as when the request runs alone. That is what keeps
results identical whatever runs beside them: attention sums over the same
cells in the same order, and a reused prefix is bit-for-bit the KV its own
evaluation would have written. Cross-slot reuse is llama.cpp's full-stream
``seq_cp`` (a buffer copy, cheaper than evaluating even a few dozen tokens),
then ``seq_rm`` of the tail.

Admission is by KV cells: a request needs a cell for every prompt token and
every token it may generate, all in its slot's stream (a reused prefix is
already there, the rest is written there). A free slot's whole stream is the
request's (its cached prefix is kept or dropped), so a request that fits one
stream takes the first free slot, and one that fits none is refused, never
left waiting. The head of the queue is never overtaken.

Slots beyond ``n_slots`` (``cached``) never generate: they keep finished
sequences' cells for reuse, least recently used first out.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import LlamaGrammar

from altlas.models.errors import GenerationCancelled, InferenceError
from altlas.models.llama_text import (
    ContextOverflowError,
    GenerationResult,
    InvalidGrammarError,
    Sampling,
    TextAssembler,
)

log = logging.getLogger(__name__)

#: A running slot's prefix is copied to a free one only when it saves at least this many tokens.
MIN_COPY_TOKENS = 32
#: A grammar-constrained request whose one sampling step took longer leaves: the step ran on the
#: decode loop, so every request beside it waited (the runtime probes only the first step).
MAX_GRAMMAR_STEP_S = 1.0


class Generation(Future[GenerationResult]):
    """The future of one request; ``cancel`` and ``stop`` also end it while it generates."""

    def __init__(self) -> None:
        super().__init__()
        self.stop_requested = False
        self.stop_reason = "it was cancelled"

    def cancel(self) -> bool:
        """Cancel a waiting request, or stop a running one within a decode step (nobody wants the answer)."""
        self.stop_requested = True
        return super().cancel()

    def stop(self, reason: str) -> None:
        """End the request, waiting or running, within one decode step, and still answer it.

        Unlike ``cancel``, the future then fails with ``GenerationCancelled`` carrying
        ``reason`` and the text generated so far: someone (an operator's command)
        still wants to know what the request had produced.
        """
        self.stop_reason = reason
        self.stop_requested = True


@dataclass(eq=False)
class Job:
    """One request in a scheduler: its prompt, sampling, and decoding state."""

    tokens: list[int]
    sampling: Sampling
    grammar: LlamaGrammar | None
    max_tokens: int  # already clamped to the context
    deadline: float | None = None  # time.monotonic() after which nobody waits
    on_text: Callable[[str], None] | None = None
    future: Generation = field(default_factory=Generation)
    submitted: float = field(default_factory=time.perf_counter)
    # decoding state, owned by the scheduler thread
    slot: _Slot | None = None
    sampler: Any = None
    text: TextAssembler = field(default_factory=lambda: TextAssembler(()))
    evaluated: int = 0  # prompt tokens in the slot's KV cells
    reused: int = 0  # of which taken from a cached prefix
    produced: int = 0
    next_token: int = -1  # sampled, to be decoded in the next step
    started: float = 0.0  # perf_counter() when it took a slot
    first_token: float | None = None  # perf_counter() of the first sampled token


@dataclass(eq=False)
class _Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV is in this stream, by position
    job: Job | None = None
    last_used: int = 0


def cells_needed(job: Job) -> int:
    """KV cells a request fills in its slot's stream: its whole prompt (reused or not) and its answer."""
    return len(job.tokens) + job.max_tokens


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # binary search on slice equality: C-speed comparisons, log(n) of them
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Scheduler:
    """A llama.cpp context with ``n_slots`` generating sequences, fed by a queue.

    Who runs, and in which slot, is decided here; what a step computes for
    them is its ``StepRunner``'s, so admission and KV reuse read apart from the
    batch layout and sampling they never depend on.
    """

    def __init__(
        self, llm: llama_cpp.Llama, n_slots: int, n_cached: int, n_ctx_seq: int, n_batch: int, reuse: bool
    ) -> None:
        self.llm = llm
        self.n_slots = n_slots
        self.n_batch = max(n_batch, n_slots + 2)
        self.reuse = reuse
        n_seq = n_slots + n_cached
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = n_ctx_seq * n_seq  # every slot gets the full per-request context
        params.n_seq_max = n_seq
        params.n_batch = params.n_ubatch = self.n_batch
        params.kv_unified = False  # one stream per slot: cell index = position, as when alone
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise InferenceError("llama.cpp could not create a batched-decoding context")
        #: KV cells of one slot's stream, as llama.cpp made it: what admission checks against.
        self.cells_per_slot = int(llama_cpp.llama_n_ctx_seq(self.ctx))
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.steps = StepRunner(llm, self.ctx, self.n_batch)
        self.slots = [_Slot(seq) for seq in range(n_seq)]
        self.running: list[Job] = []  # admission order: prompt chunks go oldest first
        self.waiting: deque[Job] = deque()
        self._clock = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="llama-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ API (any thread)
    def submit(self, job: Job) -> Generation:
        """Queue a request; it joins the next step that has a free slot."""
        with self._cond:
            if self._closed:
                raise InferenceError("the model was unloaded")
            self.waiting.append(job)
            self._cond.notify()
        return job.future

    @property
    def load(self) -> int:
        """Requests running or waiting here (to spread requests over contexts)."""
        return len(self.running) + len(self.waiting)

    def close(self) -> None:
        """Stop the loop (waiting and running requests fail), then free the context."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        for job in [*self.running, *self.waiting]:
            fail_job(job, InferenceError("the model was unloaded"))
        self.running.clear()
        self.waiting.clear()
        self.steps.close()
        llama_cpp.llama_free(self.ctx)

    # ------------------------------------------------------------ the loop (its own thread)
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self.waiting and not self.running:
                    self._cond.wait()
                if self._closed:
                    return
                self._drop_expired()
                arrivals = self._admissible()
            try:
                for job in arrivals:
                    self._admit(job)
                self._step()
            except Exception as exc:  # a failed decode: every sequence here fails, the loop goes on
                log.exception("batched decoding failed")
                for job in list(self.running):
                    self._leave(job, InferenceError(f"batched decoding failed: {exc}"))
                llama_cpp.llama_memory_clear(self.mem, True)
                for slot in self.slots:
                    slot.cached = []

    def _drop_expired(self) -> None:
        """Answer waiting requests nobody waits for any more, without them taking a slot."""
        now = time.monotonic()
        for job in [j for j in self.waiting if j.future.stop_requested or (j.deadline or now + 1) <= now]:
            self.waiting.remove(job)
            why = job.future.stop_reason if job.future.stop_requested else "the request's time budget ran out"
            fail_job(job, GenerationCancelled(f"{why}, before it started"))

    def _admissible(self) -> list[Job]:
        """The waiting requests that take a slot this step: from the head, while a slot is free.

        Each slot is a stream of its own ``cells_per_slot`` cells, all of them free
        for the request that takes it, so "enough cells free" is "a slot free and
        the request fits a stream". Taking only from the head keeps arrival order:
        a big request first in line is never overtaken by smaller ones behind it.
        """
        arrivals: list[Job] = []
        while self.waiting and len(arrivals) < self.n_slots - len(self.running):
            job = self.waiting.popleft()
            if (need := cells_needed(job)) > self.cells_per_slot:  # would wait for ever: say why now
                fail_job(
                    job,
                    ContextOverflowError(
                        f"the request needs {need} KV cells; a slot has {self.cells_per_slot}"
                    ),
                )
                continue
            arrivals.append(job)
        return arrivals

    def _admit(self, job: Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return  # cancelled while waiting
        if job.deadline is not None and time.monotonic() >= job.deadline:
            fail_job(job, GenerationCancelled("the request's time budget ran out before it started"))
            return
        job.started = time.perf_counter()
        self.steps.start(job)
        self._place(job)
        self.running.append(job)

    def _place(self, job: Job) -> None:
        """Give the job a free slot, with the longest cached prefix of its prompt already in it."""
        tokens, cap = job.tokens, max(0, len(job.tokens) - 2)  # evaluate >= 2 tokens (see StepRunner)

        def match(slot: _Slot) -> int:
            return min(common_prefix(slot.cached, tokens), cap) if self.reuse else 0

        free = [slot for slot in self.slots if slot.job is None]
        # Ties go to the lowest seq id, which keeps running seq ids consecutive (see StepRunner);
        # with nothing to reuse, the least recently used slot's cells go.
        slot = max(free, key=lambda s: (match(s), -s.seq))
        if match(slot) == 0:
            slot = min(free, key=lambda s: s.last_used)
        keep = match(slot)
        donor = max(self.slots, key=match)
        if (reach := match(donor)) >= keep + MIN_COPY_TOKENS:  # a running slot holds more of it
            slot = min(free, key=lambda s: s.last_used)
            llama_cpp.llama_memory_seq_cp(self.mem, donor.seq, slot.seq, -1, -1)
            slot.cached, keep = list(donor.cached), reach
        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq, keep, -1)
        del slot.cached[keep:]
        slot.job, job.slot, job.evaluated, job.reused = job, slot, keep, keep

    def _step(self) -> None:
        now = time.monotonic()
        for job in list(self.running):
            if job.future.stop_requested or (job.deadline is not None and now >= job.deadline):
                why = (
                    job.future.stop_reason if job.future.stop_requested else "past the request's time budget"
                )
                self._leave(job, GenerationCancelled(f"stopped after {job.produced} tokens, {why}"))
        for job, outcome in self.steps.step(self.running):
            self._leave(job, outcome)

    def _leave(self, job: Job, outcome: GenerationResult | Exception) -> None:
        """Free the job's slot now (its cells stay, for reuse) and answer it."""
        self.running.remove(job)
        job.sampler = None  # frees the chain
        if job.slot is not None:
            self._clock += 1
            job.slot.job, job.slot.last_used, job.slot = None, self._clock, None
        if isinstance(outcome, Exception):
            if isinstance(outcome, GenerationCancelled):
                outcome.partial_text, outcome.completion_tokens = job.text.text, job.produced
            fail_job(job, outcome)
        elif not job.future.done():
            job.future.set_result(outcome)


class StepRunner:
    """One step for the running jobs: their tokens through ``llama_decode``, then their logits sampled.

    The scheduler decides who runs; this side owns how a step's ``n_batch``
    tokens are cut into decode calls (and the batch buffer they are written
    to) and what a sampled token does to its request. It hands each finished
    job back as soon as it is sampled, so that job is answered, and its slot
    free, before the step's next decode call runs.
    """

    def __init__(self, llm: llama_cpp.Llama, ctx: Any, n_batch: int) -> None:
        self.llm = llm
        self.ctx = ctx
        self.n_batch = n_batch
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def close(self) -> None:
        """Free the batch buffer (the context is the scheduler's)."""
        llama_cpp.llama_batch_free(self.batch)

    def start(self, job: Job) -> None:
        """Give a job taking a slot its sampler chain and its text assembler."""
        s = job.sampling
        self.llm.set_seed(s.seed if s.seed is not None else random.SystemRandom().randrange(2**32))
        # The binding's own chain builder, so sampling means what it means in Llama.generate.
        job.sampler = self.llm._init_sampler(
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=s.min_p,
            temp=s.temperature,
            repeat_penalty=s.repeat_penalty,
            grammar=job.grammar,
        )
        job.text = TextAssembler(s.stop)

    def step(self, running: list[Job]) -> Iterator[tuple[Job, GenerationResult | Exception]]:
        """Decode one step of ``running``; yield each job that ended, with its outcome, as it ends.

        The step's calls are planned from ``running`` before the first one runs, so
        the caller may remove a yielded job from it before asking for the next.
        """
        for entries in self._calls(running):
            self._decode(entries)
            for i, (job, _, logits) in enumerate(entries):
                if logits and (outcome := self._sample(job, i)) is not None:
                    yield job, outcome

    def _calls(self, running: list[Job]) -> list[list[tuple[Job, int, bool]]]:
        # One decode call for a token of every generating sequence, one per prompt chunk:
        # llama.cpp splits a multi-stream batch into "equal" micro-batches, and a prompt
        # chunk split that way beside other sequences does not give the KV it gives alone.
        calls: list[list[tuple[Job, int, bool]]] = []  # (job, token, wants logits)
        # By seq id: llama.cpp puts only consecutive seq ids in one micro-batch (one weights pass).
        done = sorted((job for job in running if job.evaluated == len(job.tokens)), key=_seq)
        generating = [(job, job.next_token, True) for job in done]
        if generating:
            calls.append(generating)
        budget = self.n_batch - len(generating)
        for job, take in self._prompt_shares(running, budget):
            chunk = job.tokens[job.evaluated : job.evaluated + take]
            last = job.evaluated + take == len(job.tokens)
            calls.append([(job, token, False) for token in chunk[:-1]] + [(job, chunk[-1], last)])
        return calls

    @staticmethod
    def _prompt_shares(running: list[Job], budget: int) -> list[tuple[Job, int]]:
        """Prompt tokens each joining sequence evaluates this step.

        The budget is shared equally, the rest goes oldest first: a short prompt
        is never stuck behind a long one. No chunk is a single token of a longer
        prompt: llama.cpp sums attention in another order for a lone token, and
        the text could then differ from the request's evaluation alone.
        """
        joining = [job for job in running if job.evaluated < len(job.tokens)]
        if not joining or budget <= 0:
            return []
        share = max(2, budget // len(joining))
        takes: dict[Job, int] = {}
        for job in joining:
            takes[job] = min(len(job.tokens) - job.evaluated, share, budget)
            budget -= takes[job]
        for job in joining:
            extra = min(len(job.tokens) - job.evaluated - takes[job], budget)
            takes[job] += extra
            budget -= extra
        shares = []
        for job, take in takes.items():
            left = len(job.tokens) - job.evaluated
            if take < left and left - take < 2:
                take = left - 2
            if take >= min(left, 2) and take > 0:
                shares.append((job, take))
        return shares

    def _decode(self, entries: list[tuple[Job, int, bool]]) -> None:
        b = self.batch
        for i, (job, token, logits) in enumerate(entries):
            slot = job.slot
            assert slot is not None
            b.token[i] = token
            b.pos[i] = len(slot.cached)
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = slot.seq
            b.logits[i] = logits
            slot.cached.append(token)
            if job.evaluated < len(job.tokens):
                job.evaluated += 1
        b.n_tokens = len(entries)
        status = llama_cpp.llama_decode(self.ctx, b)
        if status != 0:
            raise InferenceError(f"llama_decode failed with status {status} in batched decoding")

    def _sample(self, job: Job, index: int) -> GenerationResult | Exception | None:
        """Sample the job's next token; its outcome if that ended it, else None."""
        began = time.perf_counter()
        token = llama_cpp.llama_sampler_sample(job.sampler.sampler, self.ctx, index)
        if job.grammar is not None and (spent := time.perf_counter() - began) > MAX_GRAMMAR_STEP_S:
            why = f"the grammar took {spent:.1f}s to constrain one token; at most {MAX_GRAMMAR_STEP_S}s"
            return InvalidGrammarError(why)
        if job.first_token is None:
            job.first_token = time.perf_counter()
        if llama_cpp.llama_vocab_is_eog(self.vocab, token):
            return self._finish(job, "stop")
        job.produced += 1
        hit = job.text.feed(self.llm.detokenize([token]))
        if job.on_text is not None and (chunk := job.text.ready()):
            job.on_text(chunk)
        if hit:
            return self._finish(job, "stop")
        if job.produced >= job.max_tokens:
            return self._finish(job, "length")
        job.next_token = token
        return None

    @staticmethod
    def _finish(job: Job, reason: str) -> GenerationResult:
        if job.on_text is not None and (chunk := job.text.rest()):
            job.on_text(chunk)
        return GenerationResult(
            text=job.text.text,
            finish_reason=reason,
            prompt_tokens=len(job.tokens),
            completion_tokens=job.produced,
            seconds=time.perf_counter() - job.started,
            first_token_seconds=(job.first_token or time.perf_counter()) - job.submitted,
            cached_prompt_tokens=job.reused,
        )


def _seq(job: Job) -> int:
    return job.slot.seq if job.slot is not None else -1


def fail_job(job: Job, exc: Exception) -> None:
    """Answer the job with ``exc``, unless it was answered or cancelled already."""
    future = job.future
    if future.done() or (not future.running() and not future.set_running_or_notify_cancel()):
        return  # answered, or cancelled while it waited
    future.set_exception(exc)
