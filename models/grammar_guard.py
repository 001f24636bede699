"""Grammar admission for llama.cpp: refuse a GBNF grammar before it can stall a decode loop.

llama.cpp applies a request's grammar to the whole vocabulary at every sampling
step, and sampling runs on the scheduler's thread between decode steps. An
ambiguous grammar (repeated optional or overlapping alternatives) can take
seconds per token there, and every request sharing the context waits. So a
grammar is parsed and its first step timed before it reaches a decode loop
(``GrammarAdmission``: on a probe thread of its own), and what
was decided is remembered by the grammar's hash: a tenant sending the same
hostile grammar again is refused at once, and a legitimate grammar sent with
every request is probed once. A grammar refused later by the scheduler (its
cost grew after the first token) is remembered the same way. A refusal for time
is forgotten after ``TIMED_REFUSAL_S``: on a host slowed for a while, a legitimate
grammar may have measured over the limit, and a team must not be locked out of
it for good. A grammar that does not parse is refused for as long as it is kept.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import LlamaGrammar

from altlas.models.errors import InferenceError
from altlas.models.llama_scheduler import Job, fail_job
from altlas.models.llama_text import InvalidGrammarError

#: Longest a grammar may take to constrain one token on the caller's probe.
MAX_GRAMMAR_PROBE_S = 0.25
#: Grammars whose verdict is kept, least recently used out.
VERDICTS_KEPT = 512
#: How long a refusal measured in time holds before the grammar is probed again.
TIMED_REFUSAL_S = 300.0
#: llama_token_data as numpy sees it, for the probe.
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class GrammarGuard:
    """Parses, probes and remembers grammars for one model's vocabulary (thread-safe)."""

    def __init__(self, key: str, vocab: Any, lengths: Sequence[int]) -> None:
        self.key = key  # the model's, for error messages
        self.vocab = vocab
        # refusal reason (None when fine), and when a timed refusal lapses (None: never)
        self._verdicts: OrderedDict[bytes, tuple[str | None, float | None]] = OrderedDict()
        self._lock = threading.Lock()
        # token ids, shortest piece first (``lengths``: each token's piece in bytes)
        self._by_length = np.argsort(np.asarray(lengths), kind="stable").astype(np.int32)

    @staticmethod
    def digest(gbnf: str) -> bytes:
        """What a grammar's verdict is remembered by."""
        return hashlib.sha256(gbnf.encode("utf-8")).digest()

    def decided(self, digest: bytes) -> bool:
        """Whether ``check`` would answer from memory, without probing (so at once)."""
        return self._known(digest)[0]

    def check(self, gbnf: str, digest: bytes) -> LlamaGrammar:
        """The grammar (``digest``: its ``digest``); InvalidGrammarError when refused now or before."""
        known, why = self._known(digest)
        if not known:
            why, timed = self._verdict(gbnf)
            self._remember(digest, why, timed)
        if why is not None:
            raise InvalidGrammarError(why)
        return LlamaGrammar.from_string(gbnf, verbose=False)

    def refuse(self, digest: bytes, why: str) -> None:
        """Remember a grammar the scheduler stopped: the next request with it is refused at once."""
        self._remember(digest, f"{self.key}: {why}", timed=True)

    def _known(self, digest: bytes) -> tuple[bool, str | None]:
        with self._lock:
            why, lapses = self._verdicts.get(digest, (None, 0.0))
            known = lapses is None or lapses > time.monotonic()
            if known:
                self._verdicts.move_to_end(digest)
        return known, why

    def _remember(self, digest: bytes, why: str | None, timed: bool) -> None:
        lapses = time.monotonic() + TIMED_REFUSAL_S if why is not None and timed else None
        with self._lock:
            self._verdicts[digest] = (why, lapses)
            self._verdicts.move_to_end(digest)
            while len(self._verdicts) > VERDICTS_KEPT:
                self._verdicts.popitem(last=False)

    def _verdict(self, gbnf: str) -> tuple[str | None, bool]:
        """Why the grammar is refused (or None), and whether that was measured in time.

        It is parsed first: llama.cpp crashes on a grammar that fails later.
        """
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            return f"{self.key}: the grammar does not parse (GBNF, root rule 'root')", False
        try:
            spent = self._step_cost(sampler)
        finally:
            llama_cpp.llama_sampler_free(sampler)
        if spent > MAX_GRAMMAR_PROBE_S:
            why = (
                f"{self.key}: the grammar is too ambiguous: constraining one token takes over "
                f"{MAX_GRAMMAR_PROBE_S}s (simplify repetitions of optional or overlapping alternatives)"
            )
            return why, True
        return None, False

    def _step_cost(self, sampler: Any) -> float:
        """Seconds the grammar takes to constrain the first token, cut short once over the limit.

        The whole vocabulary is checked, shortest pieces first in growing chunks:
        an ambiguous grammar costs more the longer the piece, and the probe stops
        at the first chunk that takes it past the limit.
        """
        ids = self._by_length
        candidates = np.zeros(len(ids), dtype=_TOKEN_DATA)
        candidates["id"] = ids
        start, size, spent = 0, 16, 0.0
        while start < len(ids) and spent <= MAX_GRAMMAR_PROBE_S:
            n = min(size, len(ids) - start)
            data = ctypes.cast(
                candidates.ctypes.data + start * _TOKEN_DATA.itemsize, llama_cpp.llama_token_data_p
            )
            chunk = llama_cpp.llama_token_data_array(data=data, size=n, selected=-1, sorted=False)
            began = time.perf_counter()
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(chunk))
            spent += time.perf_counter() - began
            start, size = start + n, min(size * 2, 256)
        return spent


class GrammarAdmission:
    """Lets a grammar request onto a decode loop only once its grammar is admitted.

    A grammar with a verdict is admitted (or refused) at once. One never seen
    before is probed on this model's own probe thread, one at a time: the
    caller's thread submits every request of the model, and a probe may take its
    whole time limit, so a stream of new hostile grammars holds up only requests
    with new grammars, not everybody's.
    """

    def __init__(self, guard: GrammarGuard, name: str) -> None:
        self.guard = guard
        self._probing = ThreadPoolExecutor(1, thread_name_prefix=f"grammar-{name}")
        self._waiting: set[Job] = set()  # for their grammar's probe
        self._lock = threading.Lock()

    def admit(self, job: Job, gbnf: str, queue: Callable[[Job], Future[Any]]) -> None:
        """Set the job's grammar and ``queue`` it, now or after the probe; or fail its future."""
        digest = self.guard.digest(gbnf)
        if self.guard.decided(digest):
            self._admit(job, gbnf, digest, queue)
            return
        with self._lock:
            self._waiting.add(job)
        self._probing.submit(self._admit, job, gbnf, digest, queue)

    def close(self) -> None:
        """Stop probing; requests still waiting for a probe are answered (nobody waits for ever)."""
        self._probing.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for job in self._waiting:
                fail_job(job, InferenceError("the model was unloaded"))
            self._waiting.clear()

    def _admit(self, job: Job, gbnf: str, digest: bytes, queue: Callable[[Job], Future[Any]]) -> None:
        with self._lock:
            self._waiting.discard(job)
        try:
            job.grammar = self.guard.check(gbnf, digest)
            generation = queue(job)
        except (InvalidGrammarError, InferenceError) as exc:
            fail_job(job, exc)
            return
        generation.add_done_callback(lambda f: self._late_refusal(f, digest))

    def _late_refusal(self, future: Future[Any], digest: bytes) -> None:
        """A grammar the scheduler stopped for its cost is refused at once next time."""
        if not future.cancelled() and isinstance(exc := future.exception(), InvalidGrammarError):
            self.guard.refuse(digest, str(exc))
