"""The protocol every model backend implements, and the table of backends.

A runtime knows how to load one model and run a batch through it; nothing
about Kafka, batching policy, routing or eviction (that all lives outside, as
in MLServer). Adding a backend means one module here plus one entry in
``BACKENDS``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from altlas.models.errors import ModelLoadError
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

#: Backend name in the registry -> "module:Class" of its runtime. Imported on
#: first use, so a backend's heavy dependency (llama.cpp, torch...) is only
#: needed when a model of that backend is actually configured.
BACKENDS: dict[str, str] = {
    "onnx": "altlas.models.onnx:OnnxRuntime",
    "ultralytics": "altlas.models.yolo:UltralyticsRuntime",
    "opencv-cascade": "altlas.models.cascade:CascadeRuntime",
    "tesseract": "altlas.models.tesseract:TesseractRuntime",
    "llama.cpp": "altlas.models.llama:LlamaRuntime",
    "silero-vad": "altlas.models.silero_vad:SileroVadRuntime",
    "ge2e": "altlas.models.speaker_embedding:SpeakerEmbeddingRuntime",
    "faster-whisper": "altlas.models.whisper:WhisperRuntime",
    "espeak-ng": "altlas.models.espeak:EspeakRuntime",
    "piper": "altlas.models.piper:PiperRuntime",
    "coqui": "altlas.models.coqui:CoquiRuntime",
    "pyannote": "altlas.models.pyannote:PyannoteRuntime",
}


def runtime_class(backend: str) -> RuntimeFactory:
    """The runtime class of a backend name."""
    try:
        target = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r} (known: {sorted(BACKENDS)})") from None
    module, _, name = target.partition(":")
    factory: RuntimeFactory = getattr(importlib.import_module(module), name)
    return factory


def create_runtime(spec: ModelSpec) -> ModelRuntime:
    """A not-yet-loaded runtime for ``spec``."""
    try:
        factory = runtime_class(spec.backend)
    except ValueError as exc:
        raise ValueError(f"model {spec.key}: {exc}") from None
    except ImportError as exc:
        raise ModelLoadError(
            f"model {spec.key}: backend {spec.backend!r} needs an optional dependency ({exc}); "
            "install the matching extra, e.g. pip install 'altlas[all]'"
        ) from exc
    return factory(spec)
