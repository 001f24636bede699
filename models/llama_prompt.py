"""A request's prompt tokens for one llama.cpp model: chat template, size bound, tokenizer.

The tokens are what admission counts KV cells by, so they are worked out on
the caller's thread before the request queues for a decode loop. A prompt that
cannot fit is refused before llama.cpp tokenizes it: its special-token split
takes time quadratic in the number of special-token strings (``PromptBound``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from altlas.models.errors import InvalidInputError
from altlas.models.llama_text import (
    ChatMessagesError,
    ChatTemplateError,
    ContextOverflowError,
    GenerationRequest,
    PromptBound,
)
from altlas.models.registry import ModelSpec

#: Special-token strings one prompt may hold: llama.cpp's split at them is quadratic in their
#: number, and it runs on the thread that submits every request of the model. A chat template
#: writes a few per message, so this allows conversations of a thousand messages and more.
MAX_SPECIAL_STRINGS = 4096


class PromptBuilder:
    """Renders, bounds and tokenizes prompts with the model's own vocabulary (its tiny ``Llama``)."""

    def __init__(self, spec: ModelSpec, llm: llama_cpp.Llama, n_ctx: int, lengths: Sequence[int]) -> None:
        self.key = spec.key
        self.llm = llm
        self.n_ctx = n_ctx
        self.chat = chat_formatter(spec, llm)
        self.bound = prompt_bound(llm, lengths)

    def tokens(self, request: GenerationRequest) -> list[int]:
        """The tokens the request's prompt (or rendered chat) becomes; refused when it cannot fit."""
        if request.messages is not None:
            if self.chat is None:
                raise ChatTemplateError(
                    f"{self.key} has no chat template (none in the GGUF and no params.chat_template)"
                )
            try:
                rendered = self.chat(messages=list(request.messages))  # type: ignore[arg-type]
            except ValueError as exc:  # the template's raise_exception: these messages, not the model
                raise ChatMessagesError(f"{self.key}: chat template refused the messages: {exc}") from exc
            except Exception as exc:  # a Jinja error: the template itself
                raise ChatTemplateError(f"{self.key}: chat template rejected the messages: {exc}") from exc
            text, add_bos = rendered.prompt, not rendered.added_special
        else:
            text, add_bos = request.prompt or "", True
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a JSON "\\ud800" escape
            raise InvalidInputError(f"prompt is not valid Unicode: {exc}") from None
        limit = self.n_ctx - 1
        if request.max_prompt_tokens is not None:
            limit = min(limit, request.max_prompt_tokens)
        pieces = self.bound.specials(text)  # one pass over the text serves both checks
        if (least := self.bound.min_tokens(text, pieces)) > limit:  # before the tokenizer spends seconds
            raise ContextOverflowError(
                f"prompt is at least {least} tokens; {self.key} takes at most {limit} "
                f"(context {self.n_ctx}, limits.max_prompt_tokens {request.max_prompt_tokens})"
            )
        if pieces > MAX_SPECIAL_STRINGS:  # a prompt that fits, still quadratic
            raise ContextOverflowError(
                f"prompt holds {pieces} special-token strings; at most {MAX_SPECIAL_STRINGS} "
                "(tokenizing them takes time that grows with the square of their number)"
            )
        # special=True: control tokens written in a prompt are parsed, as llama.cpp does.
        return list(self.llm.tokenize(data, add_bos=add_bos, special=True))

    def checked(self, request: GenerationRequest) -> list[int]:
        """The prompt's tokens, or ContextOverflowError: too long is rejected, never cut."""
        tokens = self.tokens(request)
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens; {self.key} has a context of {self.n_ctx} tokens "
                "(and needs room for at least one generated token)"
            )
        if request.max_prompt_tokens is not None and len(tokens) > request.max_prompt_tokens:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens; the limit is {request.max_prompt_tokens} "
                "(limits.max_prompt_tokens)"
            )
        return tokens


def chat_formatter(spec: ModelSpec, llm: llama_cpp.Llama) -> Jinja2ChatFormatter | None:
    """The model's chat template (the registry's, else the GGUF's), or None."""
    template = spec.params.get("chat_template") or llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eos, bos = llm.token_eos(), llm.token_bos()
    text = llama_cpp.llama_vocab_get_text
    return Jinja2ChatFormatter(
        template=str(template),
        eos_token=text(vocab, eos).decode("utf-8", errors="replace") if eos >= 0 else "",
        bos_token=text(vocab, bos).decode("utf-8", errors="replace") if bos >= 0 else "",
    )


def piece_lengths(vocab: Any) -> list[int]:
    """Each token's raw piece in bytes, by token id (the binding's detokenize drops some pieces).

    Read once per model: the prompt bound takes the longest, the grammar probe
    orders the vocabulary by them.
    """
    buf = ctypes.create_string_buffer(256)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    piece = llama_cpp.llama_token_to_piece
    return [abs(piece(vocab, token, buf, len(buf), 0, True)) for token in range(n_vocab)]


def prompt_bound(llm: llama_cpp.Llama, lengths: Sequence[int]) -> PromptBound:
    """The vocabulary's longest token and the special-token strings llama.cpp splits prompts at."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    special |= llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    strip = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP
    specials, strips = [], False
    for token in range(len(lengths)):
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        if attr & special:
            specials.append(llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8", errors="replace"))
            strips = strips or bool(attr & strip)
    longest = max(1, max(lengths, default=1))
    return PromptBound(longest + 1, specials, strips)  # + 1: a leading space detokenizing may drop
