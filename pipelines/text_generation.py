"""``text.generate``: a prompt in, generated text out, on a llama.cpp model.

Each item runs through the runtime's pool of contexts; with ``stream: true``
the text is also published in pieces (``TextChunk``, numbered from 0) while it
is generated, and the chunks of a request always concatenate to its final text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError

from altlas.models.errors import GenerationCancelled
from altlas.models.llama import LlamaRuntime
from altlas.models.llama_scheduler import Generation
from altlas.models.llama_text import GenerationRequest, GenerationResult
from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.pipelines.base import Output, PipelineLimits, Prepared, float_param
from altlas.pipelines.text_params import DEFAULT_TEMPERATURE, bool_param, sampling_from
from altlas.schemas.errors import InvalidRequestError, PayloadTooLargeError
from altlas.schemas.types import ParamValue, Record, TextChunk, TextGeneration

#: An output and its per-request attributes.
Answer = tuple[Output, dict[str, str]]
#: A cancelled generation's text goes into its error result's attributes up to this length.
MAX_PARTIAL_CHARS = 16_384
#: A generation stops this long (at most 15 % of its budget) before its caller gives up.
STOP_MARGIN_S = 1.0


def text_payload(payload: bytes | str, limits: PipelineLimits) -> str:
    """The request's text, within the character limit, never empty."""
    if not isinstance(payload, str):
        raise InvalidRequestError("text payload must be a string")
    if len(payload) > limits.max_text_chars:
        raise PayloadTooLargeError(
            f"text of {len(payload)} characters exceeds the limit of {limits.max_text_chars}"
        )
    if not payload.strip():
        raise InvalidRequestError("text payload is empty")
    return payload


def to_record(result: GenerationResult) -> TextGeneration:
    """The wire record of a generation."""
    return TextGeneration(
        text=result.text,
        finish_reason=result.finish_reason,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        tokens_per_second=result.tokens_per_second,
    )


def llama_runtime(runtime: ModelRuntime) -> LlamaRuntime:
    """The runtime, which must be llama.cpp's (the registry may say otherwise)."""
    if not isinstance(runtime, LlamaRuntime):
        raise TypeError(
            f"{runtime.spec.key} uses backend {runtime.spec.backend!r}; text generation needs llama.cpp"
        )
    return runtime


class TextGenerationPipeline:
    """``text.generate`` on a llama.cpp model."""

    task = "text.generate"

    def __init__(self, limits: PipelineLimits | None = None) -> None:
        self.limits = limits or PipelineLimits()

    def request(self, payload: bytes | str) -> GenerationRequest:
        """The generation request without sampling (overridden by chat)."""
        return GenerationRequest(prompt=text_payload(payload, self.limits))

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Check the prompt and every param before the model sees anything."""
        base = self.request(payload)
        bool_param(params, "stream")
        # The registry may set sampling defaults for its model (a small model answers best greedy).
        defaults = spec.params.get("request_defaults")
        request = GenerationRequest(
            prompt=base.prompt,
            messages=base.messages,
            sampling=sampling_from({**defaults, **params} if isinstance(defaults, Mapping) else params),
            max_prompt_tokens=self.limits.max_prompt_tokens,
        )
        return Prepared(request, params)

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Generate for a batch; output i answers item i."""
        raw = llama_runtime(runtime).predict_batch([_with_deadline(item) for item in items])
        return [out if isinstance(out, Exception) else to_record(out) for out in raw]

    def submit(
        self, runtime: ModelRuntime, item: Prepared, emit: Callable[[Record], None] | None = None
    ) -> Future[Answer]:
        """Queue one request on the model's decode loop and return at once (continuous batching).

        The lane calls this for every request as soon as it arrives, so requests
        join a running batch instead of waiting for it; cancelling the future
        stops the generation within one decode step. The answer is the output
        (a record, or the request's error) and its per-request attributes.
        """
        on_text = None if emit is None else _numbered(emit)
        generation = llama_runtime(runtime).submit(_with_deadline(item), on_text)
        output = Answering(generation)

        def done(f: Future[GenerationResult]) -> None:
            if output.done():  # cancelled by the caller, who no longer waits
                return
            with contextlib.suppress(InvalidStateError):  # ... or cancelled just now
                if f.cancelled():
                    output.cancel()
                elif isinstance(exc := f.exception(), GenerationCancelled):
                    output.set_result((exc, _partial(exc)))
                elif exc is not None:
                    output.set_exception(exc)
                else:
                    result = f.result()
                    output.set_result((to_record(result), generation_attributes(result)))

        # Cancelling the output cancels the generation (its slot frees within a step).
        output.add_done_callback(lambda o: generation.cancel() if o.cancelled() else None)
        generation.add_done_callback(done)
        return output

    def deterministic(self, params: Mapping[str, ParamValue], spec: ModelSpec) -> bool:
        """Whether the same request always gives the same text (greedy, or a seed): only then is it cached.

        With no params a request samples (temperature 0.8, a random seed); the
        registry's ``request_defaults`` count, as they do when it runs.
        """
        defaults = spec.params.get("request_defaults")
        merged = {**defaults, **params} if isinstance(defaults, Mapping) else params
        try:
            temperature = float_param(merged, "temperature", DEFAULT_TEMPERATURE, lo=0.0, hi=5.0)
        except InvalidRequestError:
            return False  # answered with an error, never cached
        return temperature == 0 or merged.get("seed") is not None

    def run_stream(self, runtime: ModelRuntime, item: Prepared, emit: Callable[[Record], None]) -> Output:
        """Generate one request, emitting numbered chunks as the text grows."""
        return to_record(llama_runtime(runtime).generate(_with_deadline(item), _numbered(emit)))


class Answering(Future[Answer]):
    """A submitted generation's answer; ``stop`` ends the generation early and still answers it."""

    def __init__(self, generation: Generation) -> None:
        super().__init__()
        self._generation = generation

    def stop(self, reason: str) -> None:
        """End it within one decode step; the answer is its error with the text so far (a model command)."""
        self._generation.stop(reason)


def generation_attributes(result: GenerationResult) -> dict[str, str]:
    """Per-request figures for the result's attributes (and the Prometheus histograms)."""
    attributes = {
        "tokens_per_second": f"{result.tokens_per_second:.2f}",
        "cached_prompt_tokens": str(result.cached_prompt_tokens),
    }
    if result.first_token_seconds is not None:
        attributes["time_to_first_token_ms"] = f"{result.first_token_seconds * 1000:.1f}"
    return attributes


def _partial(exc: GenerationCancelled) -> dict[str, str]:
    """What a stopped generation had produced, for its error result."""
    return {
        "completion_tokens": str(exc.completion_tokens),
        "partial_text": exc.partial_text[:MAX_PARTIAL_CHARS],
    }


def _numbered(emit: Callable[[Record], None]) -> Callable[[str], None]:
    """A text callback that emits ``TextChunk``s numbered 0, 1, 2, ..."""
    sequence = 0

    def on_text(text: str) -> None:
        nonlocal sequence
        emit(TextChunk(sequence=sequence, text=text))
        sequence += 1

    return on_text


def _with_deadline(item: Prepared) -> GenerationRequest:
    """The request, told when to stop: a generation nobody waits for must free its slot.

    It stops a little before the caller gives up, so that its own error, with
    the text generated so far, is the answer rather than a bare timeout.
    """
    request: GenerationRequest = item.data
    if item.deadline is None:
        return request
    margin = min(STOP_MARGIN_S, 0.15 * max(0.0, item.deadline - time.monotonic()))
    return dataclasses.replace(request, deadline=item.deadline - margin)
