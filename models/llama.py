"""llama.cpp backend (llama-cpp-python): any GGUF model llama.cpp can run.

A llama.cpp context is not thread-safe and holds one conversation's KV cache,
so the runtime keeps a pool of contexts (``params.contexts``, else the model's
``metadata.concurrency``, else 1) and each call takes one for its duration;
callers beyond the pool wait on a queue, on their own worker thread. The
weights are memory-mapped, so extra contexts cost their KV cache, not another
copy of the model.

Every request, batched or streamed, goes through a context's scheduler
(``llama_scheduler``): one decode loop over ``params.batch_sequences`` slots
that requests join and leave at every step, reusing the KV cells of a cached
prompt prefix. A request's text depends only on the request (and its seed),
never on what ran before or beside it. The ``Llama`` object itself only
tokenizes, detokenizes and builds sampler chains, so its own context is tiny.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import llama_cpp

from altlas.models.errors import GenerationCancelled, InferenceError, InvalidInputError, ModelLoadError
from altlas.models.gguf_header import GgufFormatError, context_length, read_metadata
from altlas.models.grammar_guard import GrammarAdmission, GrammarGuard
from altlas.models.llama_prompt import PromptBuilder, piece_lengths
from altlas.models.llama_scheduler import Generation, Job, Scheduler
from altlas.models.llama_text import (
    ChatTemplateError,
    GenerationRequest,
    GenerationResult,
)
from altlas.models.registry import ModelSpec

# InvalidInputError covers ContextOverflowError, InvalidGrammarError and ChatMessagesError.
_REQUEST_ERRORS = (InvalidInputError, ChatTemplateError, GenerationCancelled)

log = logging.getLogger(__name__)
_native_log = logging.getLogger("altlas.models.llama.native")

#: Default context when the registry names none: the model's own, capped, since
#: a 128k-token context would allocate gigabytes of KV cache per pool slot.
DEFAULT_MAX_CTX = 4096
#: Sequence slots per context decoded together (see llama_scheduler).
DEFAULT_BATCH_SEQUENCES = 4
#: Extra idle sequences per context kept only for their cached prompt prefixes.
DEFAULT_CACHED_PREFIXES = 1
#: The ``Llama`` object's own context: it never decodes, the schedulers' contexts do.
_TOKENIZER_CTX = 64

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
    """One GGUF model with a pool of llama.cpp contexts, each run by a continuous-batching scheduler."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        params = spec.params
        self.pool_size = max(1, int(params.get("contexts") or spec.metadata.concurrency or 1))
        self.prompt_cache = bool(params.get("prompt_cache", True))
        self.batch_sequences = max(1, int(params.get("batch_sequences", DEFAULT_BATCH_SEQUENCES)))
        self.cached_prefixes = max(0, int(params.get("cached_prefixes", DEFAULT_CACHED_PREFIXES)))
        self.n_ctx = 0
        self.n_threads = 0
        self.n_gpu_layers = 0
        self.metadata: dict[str, Any] = {}
        self._contexts: list[llama_cpp.Llama] = []
        self._schedulers: list[Scheduler] = []
        self._prompts: PromptBuilder | None = None
        self._grammars: GrammarAdmission | None = None

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
        n_batch = int(params.get("n_batch", 512))
        kwargs: dict[str, Any] = {
            "n_ctx": min(self.n_ctx, _TOKENIZER_CTX),
            "n_threads": self.n_threads,
            "n_threads_batch": self.n_threads,
            "n_gpu_layers": self.n_gpu_layers,
            "n_batch": n_batch,
            "flash_attn": bool(params.get("flash_attn", False)),
            "use_mmap": bool(params.get("use_mmap", True)),
        }
        try:
            for _ in range(self.pool_size):
                llm = self._construct(str(path), kwargs)
                self._contexts.append(llm)
                slots, cached = self.batch_sequences, self.cached_prefixes
                self._schedulers.append(Scheduler(llm, slots, cached, self.n_ctx, n_batch, self.prompt_cache))
        except ModelLoadError:
            self.unload()
            raise
        except Exception as exc:  # the batched-decoding context could not be made
            self.unload()
            raise ModelLoadError(f"{self.spec.key}: {exc}") from exc
        vocab = llama_cpp.llama_model_get_vocab(self._contexts[0].model)
        lengths = piece_lengths(vocab)  # one pass over the vocabulary, for both
        self._prompts = PromptBuilder(self.spec, self._contexts[0], self.n_ctx, lengths)
        self._grammars = GrammarAdmission(GrammarGuard(self.spec.key, vocab, lengths), self.spec.id)
        log.info(
            "llama.cpp model %s loaded: %d context(s) of %d slot(s) x %d tokens, %d thread(s), %d GPU layers",
            self.spec.key,
            self.pool_size,
            self.batch_sequences,
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

    def unload(self) -> None:
        """Stop the schedulers and free every context (the model's memory map goes with the last one)."""
        if self._grammars is not None:
            self._grammars.close()
            self._grammars = None
        for scheduler in self._schedulers:
            scheduler.close()
        self._schedulers.clear()
        for llm in self._contexts:
            llm.close()
        self._contexts.clear()

    def kv_cell_bytes(self) -> int:
        """KV memory of one token of one sequence (f16 keys and values, all layers)."""
        if not self._contexts:
            return 0
        model = self._contexts[0].model
        n_layer = llama_cpp.llama_model_n_layer(model)
        n_embd = llama_cpp.llama_model_n_embd(model)
        heads = max(1, llama_cpp.llama_model_n_head(model))
        kv_dim = n_embd * llama_cpp.llama_model_n_head_kv(model) // heads
        return int(n_layer * kv_dim * 2 * 2)

    def memory_bytes(self) -> int:
        """Weights on disk plus each context's KV cache: (slots + cached prefixes) x n_ctx cells."""
        path = self.spec.path
        weights = path.stat().st_size if path is not None and path.exists() else 0
        sequences = self.pool_size * (self.batch_sequences + self.cached_prefixes)
        return int(weights + sequences * self.n_ctx * self.kv_cell_bytes())

    @property
    def has_chat_template(self) -> bool:
        """Whether ``chat`` requests can be served (a template in the GGUF or the registry)."""
        return self._prompts is not None and self._prompts.chat is not None

    # ------------------------------------------------------------ inference
    def submit(self, request: GenerationRequest, on_text: Callable[[str], None] | None = None) -> Generation:
        """Queue one request on the least busy context; returns at once.

        Tokenizing runs here, on the caller's thread, and so does the check of a
        grammar seen before; a request they reject gets a future that already
        holds the error. A new grammar is probed on the model's probe thread
        (``GrammarAdmission``), and the request joins a decode loop after it.
        ``cancel()`` or ``stop(reason)`` on the future ends the request within
        one decode step (``stop`` still answers it, with its text so far).
        """
        if not self._schedulers:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        try:
            assert self._prompts is not None
            tokens = self._prompts.checked(request)
        except _REQUEST_ERRORS as exc:
            failed = Generation()
            failed.set_exception(exc)
            return failed
        s = request.sampling
        job = Job(
            tokens,
            s,
            None,
            min(s.max_tokens, self.n_ctx - len(tokens)),
            deadline=request.deadline,
            on_text=on_text,
        )
        if not s.grammar:
            return self._queue(job)
        assert self._grammars is not None
        self._grammars.admit(job, s.grammar, self._queue)
        return job.future

    def _queue(self, job: Job) -> Generation:
        schedulers = self._schedulers
        if not schedulers:
            raise InferenceError("the model was unloaded")
        return min(schedulers, key=lambda sch: sch.load).submit(job)

    def predict_batch(self, inputs: Sequence[GenerationRequest]) -> list[Any]:
        """Generate for each request; a failure stays in its slot."""
        futures = [self.submit(request) for request in inputs]
        outputs: list[Any] = []
        for future in futures:
            try:
                outputs.append(future.result())
            except Exception as exc:  # rejected, cancelled, or its decoding failed: this item only
                outputs.append(exc)
        return outputs

    def generate(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None = None
    ) -> GenerationResult:
        """One request; ``on_text`` gets the text in pieces as it is generated."""
        return self.submit(request, on_text).result()

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The tokens a request's prompt (or rendered chat) becomes."""
        if self._prompts is None:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        return self._prompts.tokens(request)
