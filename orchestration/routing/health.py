"""What altlas has learned about each model: its speed, and whether it is failing.

Latency is a moving average of measured per-item inference time, seeded from
the registry's ``latency_ms`` until the first measurement. Failures feed a
circuit breaker per model: after K consecutive model-side failures the model
is skipped for a cool-down, then one trial decides whether it closes again.
Input errors (a corrupt image) say nothing about the model and do not count,
and neither does a generation stopped on the request's behalf (its own deadline
passed, or a command cancelled it): a tenant sending requests with budgets too
short to finish must not take the model out of service for every other tenant.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from altlas.models.errors import GenerationCancelled, ModelError
from altlas.models.registry import ModelSpec
from altlas.schemas.errors import AltlasError, ErrorCode

#: Error codes that count against a model's circuit.
MODEL_SIDE = frozenset({"MODEL_FAILED", "MODEL_UNAVAILABLE", "DEADLINE_EXCEEDED"})


def error_code(exc: BaseException) -> str:
    """The wire code of an exception raised by a model or pipeline (unknown ones: MODEL_FAILED)."""
    if isinstance(exc, AltlasError):
        return exc.code.value
    if isinstance(exc, ModelError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return ErrorCode.DEADLINE_EXCEEDED.value
    return ErrorCode.MODEL_FAILED.value


@dataclass
class _Record:
    latency_ms: float | None = None
    failures: int = 0
    open_until: float = 0.0  # monotonic; 0 = closed
    samples: int = 0


class ModelHealth:
    """Latency estimates and circuit breakers for every model of a process."""

    def __init__(
        self,
        *,
        failures_to_open: int = 5,
        cooldown_s: float = 30.0,
        alpha: float = 0.2,
        on_circuit: Callable[[ModelSpec, bool, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self.alpha = alpha
        self._on_circuit = on_circuit
        self._clock = clock
        self._models: dict[str, _Record] = {}

    def _rec(self, spec: ModelSpec) -> _Record:
        rec = self._models.get(spec.key)
        if rec is None:  # not setdefault: that would build a record per lookup, per request
            rec = self._models[spec.key] = _Record()
        return rec

    # ------------------------------------------------------------ latency
    def latency_ms(self, spec: ModelSpec) -> float:
        """Expected per-item inference time: measured, else declared, else a pessimistic guess."""
        measured = self._rec(spec).latency_ms
        if measured is not None:
            return measured
        return spec.metadata.latency_ms if spec.metadata.latency_ms is not None else 1000.0

    def measured(self, spec: ModelSpec) -> bool:
        """Whether this process has timed the model at least once."""
        return self._rec(spec).samples > 0

    def observe_latency(self, spec: ModelSpec, per_item_ms: float) -> None:
        """Fold one measured per-item time into the moving average."""
        rec = self._rec(spec)
        rec.samples += 1
        rec.latency_ms = (
            per_item_ms
            if rec.latency_ms is None
            else (1 - self.alpha) * rec.latency_ms + self.alpha * per_item_ms
        )

    # ------------------------------------------------------------ circuit
    def is_open(self, spec: ModelSpec) -> bool:
        """True while the model is being skipped; after the cool-down it is half-open (tried)."""
        rec = self._rec(spec)
        return rec.open_until > 0 and self._clock() < rec.open_until

    def open_until(self, spec: ModelSpec) -> float:
        """Monotonic time the circuit stays open until (0 when closed)."""
        return self._rec(spec).open_until

    def success(self, spec: ModelSpec) -> None:
        """A model-side success: closes a (half-)open circuit."""
        rec = self._rec(spec)
        rec.failures = 0
        if rec.open_until > 0:
            rec.open_until = 0.0
            self._notify(spec, False, "a trial request succeeded")

    def failure(self, spec: ModelSpec, code: str, message: str = "") -> None:
        """A failed request; only model-side codes count towards opening the circuit."""
        if code not in MODEL_SIDE:
            return
        rec = self._rec(spec)
        rec.failures += 1
        if self.is_open(spec):
            return  # stragglers that were already running when it opened
        half_open = rec.open_until > 0
        if rec.failures >= self.failures_to_open or half_open:
            rec.open_until = self._clock() + self.cooldown_s
            self._notify(spec, True, f"{rec.failures} consecutive failures, last {code}: {message}"[:500])

    def observe(self, spec: ModelSpec, outputs: Sequence[object], inference_ms: float) -> None:
        """Learn from one batch: per-item latency when it ran, and each item's success or failure."""
        good = [o for o in outputs if not isinstance(o, BaseException)]
        if good and inference_ms > 0:
            self.observe_latency(spec, inference_ms / len(outputs))
        for out in outputs:
            if isinstance(out, GenerationCancelled):
                continue  # stopped for the request: its own time budget, or a cancel; not the model's doing
            if isinstance(out, BaseException):
                self.failure(spec, error_code(out), str(out))
            else:
                self.success(spec)

    def _notify(self, spec: ModelSpec, opened: bool, why: str) -> None:
        if self._on_circuit is not None:
            self._on_circuit(spec, opened, why)
