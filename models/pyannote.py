"""pyannote.audio backend: a speaker-diarization pipeline from a local directory, never the hub.

For users who have the weights (gated on the hub, so they cannot be had here):
the registry path is a directory holding the pipeline's ``config.yaml``, with
the segmentation and embedding checkpoints it names given as paths relative to
it. pyannote.audio (and torch) are not in the ``audio`` extra; install the
``diarization-pyannote`` extra. No token is ever used: the hub client is put
in offline mode before pyannote is imported, and a directory without
``config.yaml`` is refused before any import. Unverified here (no weights).
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from altlas.models.errors import InferenceError, ModelLoadError
from altlas.models.registry import ModelSpec

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class DiarizeInput:
    """A 16 kHz clip and what the caller knows about its speakers."""

    audio: np.ndarray
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


@dataclass(frozen=True)
class Turn:
    """One speaker's turn."""

    start: float
    end: float
    speaker: str


class PyannoteRuntime:
    """Backend ``pyannote``."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.pipeline: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Build the pipeline from ``<path>/config.yaml`` with the hub offline."""
        path = self.spec.path
        if path is None or not path.is_dir() or not (path / "config.yaml").is_file():
            raise ModelLoadError(
                f"{self.spec.key}: pyannote needs a local pipeline directory with config.yaml, got {path}"
            )
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            audio = importlib.import_module("pyannote.audio")
        except ImportError as exc:
            raise ModelLoadError(
                f"{self.spec.key}: the pyannote backend needs pyannote.audio "
                f"(pip install 'altlas[diarization-pyannote]'): {exc}"
            ) from exc
        try:
            self.pipeline = audio.Pipeline.from_pretrained(str(path / "config.yaml"))
        except Exception as exc:  # whatever pyannote raises for a bad config or checkpoint
            raise ModelLoadError(f"{self.spec.key}: cannot load {path}: {exc}") from exc
        if self.pipeline is None:
            raise ModelLoadError(f"{self.spec.key}: pyannote returned no pipeline for {path}")
        device = str(self.spec.params.get("device", "cpu"))
        if device != "cpu":
            torch = importlib.import_module("torch")
            self.pipeline.to(torch.device(device))

    def predict_batch(self, inputs: Sequence[DiarizeInput]) -> list[list[Turn] | Exception]:
        """Speaker turns per clip."""
        if self.pipeline is None:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        torch = importlib.import_module("torch")
        out: list[list[Turn] | Exception] = []
        for item in inputs:
            kwargs = {
                k: v
                for k, v in (
                    ("num_speakers", item.num_speakers),
                    ("min_speakers", item.min_speakers),
                    ("max_speakers", item.max_speakers),
                )
                if v is not None
            }
            waveform = torch.from_numpy(np.ascontiguousarray(item.audio, dtype=np.float32))[None, :]
            try:
                with self._lock:
                    result = self.pipeline({"waveform": waveform, "sample_rate": SAMPLE_RATE}, **kwargs)
            except Exception as exc:  # pyannote's own failure on this clip
                out.append(InferenceError(f"pyannote: {exc}"))
                continue
            annotation = getattr(result, "speaker_diarization", result)  # pyannote 4 wraps it
            out.append(
                [
                    Turn(float(seg.start), float(seg.end), str(label))
                    for seg, _, label in annotation.itertracks(yield_label=True)
                ]
            )
        return out

    def unload(self) -> None:
        """Drop the pipeline."""
        self.pipeline = None

    def memory_bytes(self) -> int:
        """Files of the pipeline directory."""
        path = self.spec.path
        if path is None or not path.is_dir():
            return 0
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
