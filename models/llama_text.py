"""What a llama.cpp generation is asked for and what it returns, plus its text assembly.

Kept apart from the runtime so pipelines can build requests without loading
llama.cpp, and so the byte-level text handling (stop sequences across token
boundaries, UTF-8 characters split over tokens, streamed chunks that must add
up to the final text) is testable on its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from altlas.models.errors import InferenceError, InvalidInputError


class ContextOverflowError(InvalidInputError):
    """The prompt does not fit the model's context: rejected, never truncated."""

    code = "PAYLOAD_TOO_LARGE"


class InvalidGrammarError(InvalidInputError):
    """The GBNF grammar (given, or made from a JSON schema) does not parse."""

    code = "INVALID_PARAMS"


class ChatTemplateError(InferenceError):
    """The model has no chat template, or its template fails to render."""


class ChatMessagesError(InvalidInputError):
    """The chat template refused these messages (its ``raise_exception``): the request's fault."""


class PromptBound:
    """A lower bound on a prompt's token count, cheap enough to take before tokenizing.

    llama.cpp's tokenizer splits a prompt at every special-token string in it,
    and that split costs time quadratic in the number of pieces: a prompt of
    thousands of such strings would hold the tokenizing thread for seconds,
    only to be refused for not fitting the context. Each special-token string
    becomes one token, and no token spells more than ``max_token_bytes``
    bytes, so either count can prove the prompt too long before llama.cpp sees it.
    """

    def __init__(self, max_token_bytes: int, specials: Iterable[str], strips: bool = False) -> None:
        self.max_token_bytes = max(1, max_token_bytes)
        texts = sorted({s for s in specials if s}, key=len, reverse=True)
        self._specials = re.compile("|".join(map(re.escape, texts))) if texts else None
        self._strips = strips  # some special token swallows the whitespace beside it
        # Matches found left to right may overlap the ones llama.cpp takes (longest first):
        # each of its tokens overlaps at most this many of them.
        overlap_free = all(not _overlaps(a, b) for a in texts for b in texts)
        self._per_token = 1 if overlap_free or not texts else (len(texts[0]) - 1) // len(texts[-1]) + 2

    def min_tokens(self, text: str, specials: int | None = None) -> int:
        """At most as many tokens as ``text`` really becomes (BOS not counted).

        ``specials``: ``self.specials(text)``, when the caller has counted them already.
        """
        counted = re.sub(r"\s+", "", text) if self._strips else text
        by_bytes = math.ceil(len(counted.encode("utf-8")) / self.max_token_bytes)
        if self._specials is None:
            return by_bytes
        found = self.specials(text) if specials is None else specials
        return max(by_bytes, math.ceil(found / self._per_token))

    def specials(self, text: str) -> int:
        """Special-token strings in ``text``, left to right: the tokenizer's split is quadratic in them."""
        return 0 if self._specials is None else sum(1 for _ in self._specials.finditer(text))


def _overlaps(a: str, b: str) -> bool:
    """Whether an occurrence of ``b`` can share characters with a different occurrence of ``a``."""
    if a != b and b in a:
        return True
    return any(a.endswith(b[:n]) for n in range(1, min(len(a), len(b))))


@dataclass(frozen=True)
class Sampling:
    """Per-request decoding parameters (llama.cpp's names and defaults)."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF


@dataclass(frozen=True)
class GenerationRequest:
    """A prompt (``generate``) or a list of chat messages (``chat``), and how to sample."""

    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    max_prompt_tokens: int | None = None  # a deployment-wide cap below the model's context
    deadline: float | None = None  # time.monotonic() after which nobody waits: generation stops


@dataclass(frozen=True)
class GenerationResult:
    """Generated text with its token accounting."""

    text: str
    finish_reason: str  # "stop" (EOS or a stop sequence) or "length"
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # prompt evaluation plus generation
    first_token_seconds: float | None = None  # from submission (queueing included) to the first token
    cached_prompt_tokens: int = 0  # prompt tokens whose KV cells came from a cached prefix

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens per second of this request's generation."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def _utf8_safe_end(data: bytes | bytearray, start: int, end: int) -> int:
    """``end``, or less when the bytes before it end inside an unfinished UTF-8 character."""
    lead = end - 1
    while lead >= start and end - lead <= 4 and (data[lead] & 0xC0) == 0x80:
        lead -= 1  # back over continuation bytes to the character's first byte
    if lead < start or end - lead > 4 or data[lead] < 0x80:
        return end  # ASCII, or not valid UTF-8 anyway: nothing to wait for
    first = data[lead]
    need = 2 if first < 0xE0 else 3 if first < 0xF0 else 4
    return end if end - lead >= need else lead


class TextAssembler:
    """Accumulates token bytes, finds stop sequences, and hands out safe-to-publish text.

    Streamed chunks and the final text come from the same bytes, cut only at
    character boundaries, so the chunks of a request always concatenate to its
    final text. Text that might be the start of a stop sequence is held back
    until it is known not to be one.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stops = [s.encode("utf-8") for s in stop if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._buf = bytearray()
        self._sent = 0  # bytes already handed out as chunks
        self.stopped = False

    def feed(self, piece: bytes) -> bool:
        """Add one token's bytes; True when a stop sequence completed (the text ends before it)."""
        if self.stopped:
            return True
        search_from = max(self._sent, len(self._buf) - self._longest + 1)
        self._buf += piece
        if self._stops:
            hits = [i for s in self._stops if (i := self._buf.find(s, search_from)) >= 0]
            if hits:
                del self._buf[min(hits) :]
                self.stopped = True
        return self.stopped

    def _held_back(self) -> int:
        """Bytes at the end that could still grow into a stop sequence."""
        if self.stopped:
            return 0
        longest = 0
        tail = bytes(self._buf[-self._longest :]) if self._longest else b""
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(tail)), longest, -1):
                if tail.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def ready(self) -> str:
        """New text that is safe to publish now ("" when none)."""
        cut = _utf8_safe_end(self._buf, self._sent, len(self._buf) - self._held_back())
        if cut <= self._sent:
            return ""
        chunk = bytes(self._buf[self._sent : cut]).decode("utf-8", errors="ignore")
        self._sent = cut
        return chunk

    def rest(self) -> str:
        """Everything not yet handed out (call once generation has ended)."""
        chunk = bytes(self._buf[self._sent :]).decode("utf-8", errors="ignore")
        self._sent = len(self._buf)
        return chunk

    @property
    def text(self) -> str:
        """The whole text so far (an unfinished last character is dropped)."""
        return bytes(self._buf).decode("utf-8", errors="ignore")
