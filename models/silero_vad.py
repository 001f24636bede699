"""Silero voice-activity detection on ONNX Runtime: speech probability per 32 ms frame.

Two exports of the same network ship in packages and both are served: the
streaming one from ``silero-vad`` (inputs ``input``, ``state``, ``sr``: one
512-sample chunk per call, a batch of independent clips at once) and the
sequence one faster-whisper bundles (inputs ``input``, ``h``, ``c``: every
chunk of one clip in a single call). Each chunk is preceded by the last 64
samples of the one before, as the network was trained.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from altlas.models.errors import ModelLoadError
from altlas.models.registry import ModelSpec

SAMPLE_RATE = 16_000
CHUNK = 512  # samples per decision at 16 kHz (32 ms)
CONTEXT = 64


@dataclass(frozen=True)
class SpeechRegion:
    """A stretch of speech, in seconds."""

    start: float
    end: float
    score: float


def bundled_vad_path() -> Path | None:
    """The Silero VAD that faster-whisper ships (a package file, not a download), if installed."""
    try:
        import faster_whisper
    except ImportError:
        return None
    path = Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"
    return path if path.exists() else None


class SileroVad:
    """One Silero session; ``probabilities`` is thread-safe (state lives per call)."""

    def __init__(self, path: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises untyped errors
            raise ModelLoadError(f"cannot load Silero VAD {path}: {exc}") from exc
        names = {i.name for i in self.session.get_inputs()}
        if {"input", "state", "sr"} <= names:
            self.kind = "streaming"
        elif {"input", "h", "c"} <= names:
            self.kind = "sequence"
        else:
            raise ModelLoadError(f"{path} is not a Silero VAD export (inputs {sorted(names)})")
        self.path = path

    def probabilities(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Speech probability of every 512-sample chunk of each 16 kHz clip."""
        if self.kind == "sequence":
            return [self._sequence(clip) for clip in clips]
        return self._streaming(clips)

    @staticmethod
    def _chunks(clip: np.ndarray) -> np.ndarray:
        n = max(1, -(-clip.size // CHUNK))
        padded = np.zeros(n * CHUNK, dtype=np.float32)
        padded[: clip.size] = clip
        chunks = padded.reshape(n, CHUNK)
        context = np.zeros((n, CONTEXT), dtype=np.float32)
        context[1:] = chunks[:-1, -CONTEXT:]
        return np.concatenate([context, chunks], axis=1)

    def _sequence(self, clip: np.ndarray) -> np.ndarray:
        h = np.zeros((1, 1, 128), dtype=np.float32)
        c = np.zeros((1, 1, 128), dtype=np.float32)
        probs, _, _ = self.session.run(None, {"input": self._chunks(clip), "h": h, "c": c})
        return np.asarray(probs, dtype=np.float32).reshape(-1)

    def _streaming(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        chunked = [self._chunks(c) for c in clips]
        steps = max(c.shape[0] for c in chunked)
        batch = np.zeros((len(clips), steps, CHUNK + CONTEXT), dtype=np.float32)
        for i, c in enumerate(chunked):
            batch[i, : c.shape[0]] = c
        state = np.zeros((2, len(clips), 128), dtype=np.float32)
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        out = np.zeros((len(clips), steps), dtype=np.float32)
        for t in range(steps):
            probs, state = self.session.run(None, {"input": batch[:, t], "state": state, "sr": sr})
            out[:, t] = np.asarray(probs).reshape(-1)
        return [out[i, : c.shape[0]] for i, c in enumerate(chunked)]


def speech_regions(
    probs: np.ndarray,
    duration_s: float,
    *,
    threshold: float = 0.5,
    min_speech_s: float = 0.25,
    min_silence_s: float = 0.1,
    pad_s: float = 0.03,
) -> list[SpeechRegion]:
    """Frames above ``threshold`` joined into regions (hysteresis 0.15 below it, as Silero advises)."""
    frame = CHUNK / SAMPLE_RATE
    regions: list[list[float]] = []
    start: int | None = None
    low = max(0.01, threshold - 0.15)
    for i, p in enumerate(probs):
        if start is None and p >= threshold:
            start = i
        elif start is not None and p < low:
            regions.append([start * frame, i * frame, float(np.mean(probs[start:i]))])
            start = None
    if start is not None:
        regions.append([start * frame, len(probs) * frame, float(np.mean(probs[start:]))])
    merged: list[list[float]] = []
    for region in regions:
        if merged and region[0] - merged[-1][1] < min_silence_s:
            merged[-1][1] = region[1]
            merged[-1][2] = max(merged[-1][2], region[2])
        else:
            merged.append(region)
    return [
        SpeechRegion(max(0.0, s - pad_s), min(duration_s, e + pad_s), score)
        for s, e, score in merged
        if e - s >= min_speech_s
    ]


class SileroVadRuntime:
    """Backend ``silero-vad``: input 16 kHz float32 clips, output per-chunk speech probabilities."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.vad: SileroVad | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Open the ONNX file named by the registry (or the one faster-whisper bundles)."""
        path = self.spec.path or bundled_vad_path()
        if path is None:
            raise ModelLoadError(
                f"{self.spec.key}: no path, and faster-whisper's bundled VAD is not installed"
            )
        if not path.exists():
            raise ModelLoadError(f"{self.spec.key}: {path} does not exist")
        self.vad = SileroVad(path)

    def predict_batch(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-chunk speech probabilities of each clip."""
        if self.vad is None:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        return self.vad.probabilities(list(inputs))

    def unload(self) -> None:
        """Drop the session."""
        self.vad = None

    def memory_bytes(self) -> int:
        """Size of the ONNX file (2 MB)."""
        path = self.vad.path if self.vad else self.spec.path
        return path.stat().st_size if path is not None and path.exists() else 0
