"""llama.cpp backend (llama-cpp-python): any GGUF model llama.cpp can run.

A llama.cpp context is not thread-safe and holds one conversation's KV cache,
so the runtime keeps a pool of contexts (``params.contexts``, else the model's
``metadata.concurrency``, else 1) and each call takes one for its duration;
callers beyond the pool wait on a queue, on their own worker thread. The
weights are memory-mapped, so extra contexts cost their KV cache, not another
copy of the model.

When several requests are queued, up to ``params.batch_sequences`` of them are
decoded together in one context (llama.cpp's batched decoding, see
``llama_batch``); a lone or streamed request takes the single-sequence path.

Single-sequence generation is a token loop over ``Llama.generate`` rather than
``create_completion``: that gives exact token accounting, a context check before
anything runs, and streamed text that always adds up to the final text (see
``llama_text.TextAssembler``). Each request starts from a cleared context
(unless ``params.prompt_cache``), so the same request with the same seed gives
the same text whatever ran on that context before.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import LlamaGrammar

from altlas.models.errors import GenerationCancelled, ModelLoadError
from altlas.models.gguf_header import GgufFormatError, context_length, read_metadata
from altlas.models.llama_batch import BatchDecoder, BatchItem
from altlas.models.llama_text import (
    ChatTemplateError,
    ContextOverflowError,
    GenerationRequest,
    GenerationResult,
    InvalidGrammarError,
    TextAssembler,
)
from altlas.models.registry import ModelSpec

_REQUEST_ERRORS = (ContextOverflowError, InvalidGrammarError, ChatTemplateError, GenerationCancelled)

log = logging.getLogger(__name__)
_native_log = logging.getLogger("altlas.models.llama.native")

#: Default context when the registry names none: the model's own, capped, since
#: a 128k-token context would allocate gigabytes of KV cache per pool slot.
DEFAULT_MAX_CTX = 4096
#: Sequences decoded together when several requests are queued (see llama_batch).
DEFAULT_BATCH_SEQUENCES = 4

# llama.cpp's log goes to one process-wide callback. Ours forwards it to logging
# and keeps recent error lines per thread, so a failed load can say why (the
# binding's own answer is only "Failed to load model").
_recent_errors = threading.local()
_GGML_LOG_ERROR = 4  # enum ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _on_native_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    message = text.decode("utf-8", errors="replace").rstrip()
    if level == _GGML_LOG_ERROR:
        lines: deque[str] = getattr(_recent_errors, "lines", None) or deque(maxlen=8)
        lines.append(message)
        _recent_errors.lines = lines
    if message:
        _native_log.debug(message)


# Llama(verbose=False) redirects the process's fds 1 and 2 while it loads, and
# the binding's Python side prints during construction: build one at a time,
# verbose (our callback takes the native log), with Python's stderr captured.
_construct_lock = threading.Lock()
_log_installed = False


def _install_log_callback() -> None:
    global _log_installed
    if not _log_installed:
        llama_cpp.llama_log_set(_on_native_log, ctypes.c_void_p(0))
        _log_installed = True


def gpu_offload_supported() -> bool:
    """Whether the installed llama.cpp build can offload layers to a GPU."""
    return bool(llama_cpp.llama_supports_gpu_offload())


class LlamaRuntime:
    """One GGUF model with a pool of llama.cpp contexts."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        params = spec.params
        self.pool_size = max(1, int(params.get("contexts") or spec.metadata.concurrency or 1))
        self.prompt_cache = bool(params.get("prompt_cache", False))
        self.batch_sequences = max(1, int(params.get("batch_sequences", DEFAULT_BATCH_SEQUENCES)))
        self.n_ctx = 0
        self.n_threads = 0
        self.n_gpu_layers = 0
        self.metadata: dict[str, Any] = {}
        self._contexts: list[llama_cpp.Llama] = []
        self._free: queue.Queue[llama_cpp.Llama] = queue.Queue()
        self._batchers: dict[int, BatchDecoder] = {}  # id(context) -> its batched-decoding twin
        self._chat: Jinja2ChatFormatter | None = None

    # ------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Check the file, then build the pool of contexts; failures say why."""
        path = self.spec.path
        if path is None:
            raise ModelLoadError(f"{self.spec.key}: llama.cpp models need a path to a .gguf file")
        if not path.is_file():
            raise ModelLoadError(f"{self.spec.key}: no model file at {path}")
        try:
            self.metadata = read_metadata(path)
        except (GgufFormatError, OSError) as exc:
            raise ModelLoadError(f"{self.spec.key}: cannot load {path}: {exc}") from exc
        params = self.spec.params
        trained = context_length(self.metadata)
        self.n_ctx = int(params.get("n_ctx") or min(trained or DEFAULT_MAX_CTX, DEFAULT_MAX_CTX))
        self.n_threads = int(params.get("n_threads") or max(1, (os.cpu_count() or 1) // self.pool_size))
        self.n_gpu_layers = self._gpu_layers(params.get("n_gpu_layers", "auto"))
        kwargs: dict[str, Any] = {
            "n_ctx": self.n_ctx,
            "n_threads": self.n_threads,
            "n_threads_batch": self.n_threads,
            "n_gpu_layers": self.n_gpu_layers,
            "n_batch": int(params.get("n_batch", 512)),
            "flash_attn": bool(params.get("flash_attn", False)),
            "use_mmap": bool(params.get("use_mmap", True)),
        }
        try:
            for _ in range(self.pool_size):
                llm = self._construct(str(path), kwargs)
                self._contexts.append(llm)
                if self.batch_sequences > 1:
                    self._batchers[id(llm)] = BatchDecoder(
                        llm, self.batch_sequences, self.n_ctx, kwargs["n_batch"]
                    )
                self._free.put(llm)
        except ModelLoadError:
            self.unload()
            raise
        except Exception as exc:  # the batched-decoding context could not be made
            self.unload()
            raise ModelLoadError(f"{self.spec.key}: {exc}") from exc
        self._chat = self._chat_formatter(self._contexts[0])
        log.info(
            "llama.cpp model %s loaded: %d context(s) of %d tokens, %d thread(s), %d GPU layer(s)",
            self.spec.key,
            self.pool_size,
            self.n_ctx,
            self.n_threads,
            self.n_gpu_layers,
        )

    def _construct(self, path: str, kwargs: dict[str, Any]) -> llama_cpp.Llama:
        with _construct_lock:
            _install_log_callback()
            _recent_errors.lines = deque(maxlen=8)
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    llm = llama_cpp.Llama(path, verbose=True, **kwargs)
            except Exception as exc:  # the binding raises ValueError/RuntimeError with no detail
                detail = "; ".join(getattr(_recent_errors, "lines", ())) or str(exc)
                raise ModelLoadError(f"{self.spec.key}: llama.cpp cannot load {path}: {detail}") from exc
        llm.verbose = False  # no per-request prints from the binding
        return llm

    @staticmethod
    def _gpu_layers(value: Any) -> int:
        if value in (None, "auto"):
            return -1 if gpu_offload_supported() else 0
        return int(value)

    def _chat_formatter(self, llm: llama_cpp.Llama) -> Jinja2ChatFormatter | None:
        template = self.spec.params.get("chat_template") or llm.metadata.get("tokenizer.chat_template")
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

    def unload(self) -> None:
        """Free every context (the model's memory map goes with the last one)."""
        for batcher in self._batchers.values():
            batcher.close()
        self._batchers.clear()
        for llm in self._contexts:
            llm.close()
        self._contexts.clear()
        self._free = queue.Queue()

    def memory_bytes(self) -> int:
        """Weights on disk plus each context's KV cache (f16 keys and values)."""
        path = self.spec.path
        weights = path.stat().st_size if path is not None and path.exists() else 0
        if not self._contexts:
            return weights
        model = self._contexts[0].model
        n_layer = llama_cpp.llama_model_n_layer(model)
        n_embd = llama_cpp.llama_model_n_embd(model)
        heads = max(1, llama_cpp.llama_model_n_head(model))
        kv_dim = n_embd * llama_cpp.llama_model_n_head_kv(model) // heads
        sequences = self.pool_size * (1 + (self.batch_sequences if self.batch_sequences > 1 else 0))
        return int(weights + sequences * self.n_ctx * n_layer * kv_dim * 2 * 2)

    @property
    def has_chat_template(self) -> bool:
        """Whether ``chat`` requests can be served (a template in the GGUF or the registry)."""
        return self._chat is not None

    # ------------------------------------------------------------ inference
    @contextlib.contextmanager
    def _context(self) -> Iterator[llama_cpp.Llama]:
        if not self._contexts:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        llm = self._free.get()  # blocks this worker thread, never the event loop
        try:
            yield llm
        finally:
            self._free.put(llm)

    def predict_batch(self, inputs: Sequence[GenerationRequest]) -> list[Any]:
        """Generate for each request on one context; a failure stays in its slot.

        With ``batch_sequences`` > 1, up to that many requests decode together.
        """
        outputs: list[Any] = [None] * len(inputs)
        with self._context() as llm:
            batcher = self._batchers.get(id(llm))
            step = batcher.n_seq if batcher is not None and len(inputs) > 1 else 1
            for start in range(0, len(inputs), step):
                group = list(range(start, min(start + step, len(inputs))))
                if batcher is None or len(group) == 1:
                    for i in group:
                        outputs[i] = self._one(llm, inputs[i])
                    continue
                items: dict[int, BatchItem] = {}
                for i in group:
                    try:
                        items[i] = self._batch_item(llm, inputs[i])
                    except _REQUEST_ERRORS as exc:
                        outputs[i] = exc
                if len(items) == 1:
                    (i,) = items
                    outputs[i] = self._one(llm, inputs[i])
                elif items:
                    for i, result in zip(items, batcher.run(list(items.values())), strict=True):
                        outputs[i] = result
        return outputs

    def _one(self, llm: llama_cpp.Llama, request: GenerationRequest) -> Any:
        try:
            return self._generate(llm, request, None)
        except _REQUEST_ERRORS as exc:
            return exc

    def _batch_item(self, llm: llama_cpp.Llama, request: GenerationRequest) -> BatchItem:
        tokens = self._checked_tokens(llm, request)
        s = request.sampling
        grammar = self._grammar(llm, s.grammar) if s.grammar else None
        return BatchItem(
            tokens, s, grammar, min(s.max_tokens, self.n_ctx - len(tokens)), deadline=request.deadline
        )

    def generate(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None = None
    ) -> GenerationResult:
        """One request; ``on_text`` gets the text in pieces as it is generated."""
        with self._context() as llm:
            return self._generate(llm, request, on_text)

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The tokens a request's prompt (or rendered chat) becomes."""
        with self._context() as llm:
            return self._tokens(llm, request)

    def _tokens(self, llm: llama_cpp.Llama, request: GenerationRequest) -> list[int]:
        if request.messages is not None:
            if self._chat is None:
                raise ChatTemplateError(
                    f"{self.spec.key} has no chat template (none in the GGUF and no params.chat_template)"
                )
            try:
                rendered = self._chat(messages=list(request.messages))  # type: ignore[arg-type]
            except Exception as exc:  # the template's raise_exception, or a Jinja error
                raise ChatTemplateError(
                    f"{self.spec.key}: chat template rejected the messages: {exc}"
                ) from exc
            text, add_bos = rendered.prompt, not rendered.added_special
        else:
            text, add_bos = request.prompt or "", True
        # special=True: control tokens written in a prompt are parsed, as llama.cpp does.
        return list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def _grammar(self, llm: llama_cpp.Llama, gbnf: str) -> LlamaGrammar:
        """Parse once against the vocabulary: llama.cpp crashes on a grammar that fails later."""
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise InvalidGrammarError(f"{self.spec.key}: the grammar does not parse (GBNF, root rule 'root')")
        llama_cpp.llama_sampler_free(sampler)
        return LlamaGrammar.from_string(gbnf, verbose=False)

    def _generate(
        self, llm: llama_cpp.Llama, request: GenerationRequest, on_text: Callable[[str], None] | None
    ) -> GenerationResult:
        started = time.perf_counter()
        if request.deadline is not None and time.monotonic() >= request.deadline:
            raise GenerationCancelled(f"{self.spec.key}: the request's time budget ran out before it started")
        s = request.sampling
        tokens = self._checked_tokens(llm, request)
        grammar = self._grammar(llm, s.grammar) if s.grammar else None
        max_tokens = min(s.max_tokens, self.n_ctx - len(tokens))
        if not self.prompt_cache:  # no prefix reuse: the text must not depend on the previous request
            llm.reset()  # type: ignore[no-untyped-call]
        llm.set_seed(s.seed if s.seed is not None else random.SystemRandom().randrange(2**32))
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        text = TextAssembler(s.stop)
        finish, produced = "length", 0
        for token in llm.generate(
            tokens,
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=s.min_p,
            temp=s.temperature,
            repeat_penalty=s.repeat_penalty,
            grammar=grammar,
        ):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            produced += 1
            hit = text.feed(llm.detokenize([token]))
            if on_text is not None and (chunk := text.ready()):
                on_text(chunk)
            if hit:
                finish = "stop"
                break
            if produced >= max_tokens:
                break
            if request.deadline is not None and time.monotonic() >= request.deadline:
                raise GenerationCancelled(
                    f"{self.spec.key}: stopped after {produced} tokens, past the request's time budget"
                )
        if on_text is not None and (chunk := text.rest()):
            on_text(chunk)
        return GenerationResult(
            text=text.text,
            finish_reason=finish,
            prompt_tokens=len(tokens),
            completion_tokens=produced,
            seconds=time.perf_counter() - started,
        )

    def _checked_tokens(self, llm: llama_cpp.Llama, request: GenerationRequest) -> list[int]:
        """The prompt's tokens, or ContextOverflowError: too long is rejected, never cut."""
        tokens = self._tokens(llm, request)
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens; {self.spec.key} has a context of {self.n_ctx} tokens "
                "(and needs room for at least one generated token)"
            )
        if request.max_prompt_tokens is not None and len(tokens) > request.max_prompt_tokens:
            raise ContextOverflowError(
                f"prompt is {len(tokens)} tokens; the limit is {request.max_prompt_tokens} "
                "(limits.max_prompt_tokens)"
            )
        return tokens
