"""What a pipeline is: decode a request's payload, run a batch, shape outputs.

A pipeline owns one task (``vision.classify``...). ``prepare`` turns one
request into model input and may reject it (bad image, wrong params) without
touching the model; ``run`` sends a batch of prepared items through a loaded
runtime and returns one output record, or one error, per item. Both are
blocking and run on worker threads; neither knows about Kafka.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import ParamValue, Record


@dataclass(frozen=True)
class PipelineLimits:
    """Input limits every pipeline enforces before decoding."""

    max_payload_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_audio_seconds: float = 600.0
    max_audio_samples: int = 64_000_000  # frames x channels a payload may declare
    max_text_chars: int = 200_000
    max_prompt_tokens: int | None = None


@dataclass
class Prepared:
    """A request turned into model input, plus the params that shape its output."""

    data: Any
    params: Mapping[str, ParamValue]
    # time.monotonic() after which nobody waits for the output: long generations stop there.
    deadline: float | None = None


Output = Record | Exception


class Pipeline(Protocol):
    """One task's decode -> infer -> shape logic.

    A pipeline that can stream (text generation) also has
    ``run_stream(runtime, item, emit) -> Output``: it calls ``emit(chunk)`` with
    each partial output record as the model makes it, then returns the final
    output. Requests with ``params.stream = true`` go through it, one at a time.

    A pipeline whose ``prepare`` depends only on its arguments and on the
    pipeline's own picklable settings (no loaded model, no tokenizer cache)
    says so with a class attribute ``decodes_anywhere = True``: decoder
    processes may then run it (orchestration/execution/preparation.py).
    """

    task: str

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Decode and validate one payload; raise an AltlasError to reject it."""

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Run a batch; return one output record or exception per item, in order."""


def int_param(params: Mapping[str, ParamValue], name: str, default: int, *, lo: int, hi: int) -> int:
    """Read an integer param with bounds; a bad value is the caller's error, not ours."""
    value = params.get(name, default)
    if type(value) is int and lo <= value <= hi:  # the common case, checked per item
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequestError(f"param {name} must be an integer", code=ErrorCode.INVALID_PARAMS)
    try:
        number = int(value)
    except ValueError:
        raise InvalidRequestError(
            f"param {name} must be an integer, got {value!r}", code=ErrorCode.INVALID_PARAMS
        ) from None
    if not lo <= number <= hi:
        raise InvalidRequestError(
            f"param {name} must be in [{lo}, {hi}], got {number}", code=ErrorCode.INVALID_PARAMS
        )
    return number


def bad_param(message: str) -> InvalidRequestError:
    """The caller's INVALID_PARAMS error for a param it got wrong."""
    return InvalidRequestError(message, code=ErrorCode.INVALID_PARAMS)


def bounded_float(name: str, value: Any, *, lo: float, hi: float) -> float:
    """``value`` as a finite number in [lo, hi]; strings holding a number are accepted (CLI ``-p k=v``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise bad_param(f"param {name} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise bad_param(f"param {name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise bad_param(f"param {name} must be in [{lo}, {hi}], got {value!r}")
    return number


def float_param(
    params: Mapping[str, ParamValue], name: str, default: float, *, lo: float, hi: float
) -> float:
    """A request's number param in [lo, hi]; absent or null is ``default``."""
    value = params.get(name, default)
    return default if value is None else bounded_float(name, value, lo=lo, hi=hi)


def model_param(spec: ModelSpec, name: str, default: Any = None) -> Any:
    """A registry param of the model (``params:`` in the registry entry)."""
    return spec.params.get(name, default)


def held_bytes(data: Any, depth: int = 0) -> int:
    """Roughly how much memory a prepared input holds: its arrays and images, found a few levels deep.

    Decoded payloads can be far larger than the records they came from (a
    small PNG, a FLAC of silence), so this is what counts against the
    in-flight byte budget while a batch waits for its model.
    """
    if depth > 3 or data is None or isinstance(data, str | bytes | int | float):
        return len(data) if isinstance(data, str | bytes) else 0
    nbytes = getattr(data, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    size, mode = getattr(data, "size", None), getattr(data, "mode", None)
    if isinstance(mode, str) and isinstance(size, tuple) and len(size) == 2:  # a PIL image
        return int(size[0]) * int(size[1]) * max(1, len(mode))
    if isinstance(data, tuple | list):
        return sum(held_bytes(item, depth + 1) for item in data[:64])
    fields = getattr(data, "__dataclass_fields__", None) or getattr(data, "_fields", None)
    if fields:
        return sum(held_bytes(getattr(data, name, None), depth + 1) for name in fields)
    return 0
