"""The protocol every model backend implements, and the table of backends.

A runtime knows how to load one model and run a batch through it; nothing
about Kafka, batching policy, routing or eviction (that all lives outside, as
in MLServer). Adding a backend means one module here plus one entry in
``BACKENDS``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from altlas.models.registry import ModelSpec


@runtime_checkable
class ModelRuntime(Protocol):
    """A loaded (or loadable) model. Methods are blocking; callers use threads."""

    spec: ModelSpec

    def load(self) -> None:
        """Read the model's files and make it ready to run."""

    def predict_batch(self, inputs: Sequence[Any]) -> list[Any]:
        """Run one batch; returns one output per input, in order."""

    def unload(self) -> None:
        """Free what ``load`` took."""

    def memory_bytes(self) -> int:
        """Best estimate of the memory the loaded model holds."""


RuntimeFactory = Callable[[ModelSpec], ModelRuntime]


def _onnx(spec: ModelSpec) -> ModelRuntime:
    from altlas.models.onnx import OnnxRuntime

    return OnnxRuntime(spec)


#: Backend name in the registry -> factory. Imports are lazy so that a backend's
#: heavy dependency is only needed when a model of that backend is used.
BACKENDS: dict[str, RuntimeFactory] = {
    "onnx": _onnx,
}


def create_runtime(spec: ModelSpec) -> ModelRuntime:
    """A not-yet-loaded runtime for ``spec``."""
    try:
        factory = BACKENDS[spec.backend]
    except KeyError:
        raise ValueError(
            f"model {spec.key}: unknown backend {spec.backend!r} (known: {sorted(BACKENDS)})"
        ) from None
    return factory(spec)
