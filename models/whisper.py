"""faster-whisper (CTranslate2) backend: speech to text, clips micro-batched into one encoder call.

The registry path is a converted model directory (``model.bin``,
``config.json``, ``tokenizer.json``, ...): tiny to large-v3, distil, or any
CTranslate2 Whisper. Nothing is ever downloaded: a directory without
``tokenizer.json`` is refused at load (faster-whisper would otherwise fetch one
from the hub) and the hub client is put in offline mode.

Batching: clips of up to 30 s that share their decoding options are laid end
to end and handed to faster-whisper's batched pipeline with one clip per
chunk, so one encoder/decoder call serves the whole micro-batch. Longer clips,
voice-activity filtering and language detection on multilingual models take
the sequential path, which is faster-whisper's own long-form algorithm.

Registry params: ``device`` (cpu|cuda|auto), ``compute_type`` (default int8 on
CPU, float16 on CUDA), ``cpu_threads``, ``diarizer`` (a nested registry entry,
e.g. ``{backend: ge2e, path: ...}``, that serves ``diarize: true``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from altlas.models.errors import InvalidInputError, ModelLoadError
from altlas.models.registry import ModelMetadata, ModelSpec
from altlas.models.runtime import ModelRuntime, create_runtime

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30.0


@dataclass(frozen=True)
class TranscribeOptions:
    """Decoding options; requests with equal options can share a batch."""

    language: str | None = None
    task: str = "transcribe"
    beam_size: int = 5
    vad_filter: bool = False
    word_timestamps: bool = False


@dataclass(frozen=True)
class TranscribeInput:
    """One clip (16 kHz mono float32) and how to decode it."""

    audio: np.ndarray
    options: TranscribeOptions


@dataclass(frozen=True)
class WordTiming:
    """A recognised word."""

    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class SegmentText:
    """A recognised span."""

    start: float
    end: float
    text: str
    words: list[WordTiming] = field(default_factory=list)


@dataclass(frozen=True)
class TranscribeOutput:
    """What the model heard in one clip."""

    language: str
    language_probability: float
    duration_s: float
    segments: list[SegmentText]


class WhisperRuntime:
    """One faster-whisper model; ``num_workers`` = the model's concurrency, so lanes run in parallel."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.model: Any = None
        self.diarizer: ModelRuntime | None = None

    # ------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Open the converted model directory; refuse anything that would reach the hub."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = self.spec.path
        if path is None or not path.is_dir():
            raise ModelLoadError(f"{self.spec.key}: faster-whisper needs a model directory, got {path}")
        missing = [n for n in ("model.bin", "config.json", "tokenizer.json") if not (path / n).is_file()]
        if missing:
            raise ModelLoadError(
                f"{self.spec.key}: {path} lacks {', '.join(missing)} (faster-whisper would download a "
                "tokenizer; copy tokenizer.json from the original model into the directory)"
            )
        from faster_whisper import WhisperModel

        params = self.spec.params
        device = str(params.get("device", "cpu"))
        if device == "auto":
            device = "cuda" if _cuda_available() else "cpu"
        compute = str(params.get("compute_type", "float16" if device == "cuda" else "int8"))
        try:
            self.model = WhisperModel(
                str(path),
                device=device,
                compute_type=compute,
                cpu_threads=int(params.get("cpu_threads", 0)),
                num_workers=self.spec.metadata.concurrency or 1,
                local_files_only=True,
            )
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError with the reason
            raise ModelLoadError(f"{self.spec.key}: cannot load {path}: {exc}") from exc
        diarizer = params.get("diarizer")
        if isinstance(diarizer, dict):
            self.diarizer = self._companion(diarizer)
            self.diarizer.load()

    def _companion(self, entry: dict[str, Any]) -> ModelRuntime:
        raw = entry.get("path")
        path = Path(str(raw)).expanduser() if raw else None
        if path is not None and not path.is_absolute() and self.spec.path is not None:
            path = (self.spec.path.parent / path).resolve()
        spec = ModelSpec(
            id=f"{self.spec.id}-diarizer",
            version=self.spec.version,
            task="audio.diarize",
            backend=str(entry.get("backend", "ge2e")),
            path=path,
            params=dict(entry.get("params", {})),
            metadata=ModelMetadata(),
        )
        try:
            return create_runtime(spec)
        except ValueError as exc:
            raise ModelLoadError(f"{self.spec.key}: diarizer: {exc}") from exc

    def unload(self) -> None:
        """Drop the CTranslate2 model (and the diarizer)."""
        self.model = None
        if self.diarizer is not None:
            self.diarizer.unload()
            self.diarizer = None

    def memory_bytes(self) -> int:
        """Model files on disk (a floor of what CTranslate2 holds), plus the diarizer."""
        path = self.spec.path
        own = sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if path and path.is_dir() else 0
        return own + (self.diarizer.memory_bytes() if self.diarizer else 0)

    @property
    def multilingual(self) -> bool:
        """Whether the model knows more than English (else language is always en)."""
        return bool(self.model is not None and self.model.model.is_multilingual)

    # ------------------------------------------------------------ inference
    def predict_batch(self, inputs: Sequence[TranscribeInput]) -> list[Any]:
        """Transcribe clips; one TranscribeOutput (or exception) per input."""
        if self.model is None:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        results: list[Any] = [None] * len(inputs)
        groups: dict[TranscribeOptions, list[int]] = {}
        for i, item in enumerate(inputs):
            if item.audio.ndim != 1 or item.audio.size == 0:
                results[i] = InvalidInputError(f"{self.spec.key}: expects non-empty mono audio")
            elif self._batchable(item):
                groups.setdefault(item.options, []).append(i)
            else:
                results[i] = self._sequential(item)
        for options, indices in groups.items():
            if len(indices) == 1:
                results[indices[0]] = self._sequential(inputs[indices[0]])
                continue
            for i, out in zip(
                indices, self._batched([inputs[i].audio for i in indices], options), strict=True
            ):
                results[i] = out
        return results

    def _batchable(self, item: TranscribeInput) -> bool:
        fits = item.audio.size <= CHUNK_SECONDS * SAMPLE_RATE
        knows_language = item.options.language is not None or not self.multilingual
        return fits and knows_language and not item.options.vad_filter

    def _language(self, options: TranscribeOptions) -> str | None:
        return options.language if self.multilingual else "en"

    def _sequential(self, item: TranscribeInput) -> TranscribeOutput:
        opts = item.options
        segments, info = self.model.transcribe(
            item.audio,
            language=self._language(opts),
            task=opts.task,
            beam_size=opts.beam_size,
            vad_filter=opts.vad_filter,
            word_timestamps=opts.word_timestamps,
            condition_on_previous_text=False,
        )
        return TranscribeOutput(
            language=str(info.language),
            language_probability=float(info.language_probability),
            duration_s=item.audio.size / SAMPLE_RATE,
            segments=[_segment(s) for s in segments],
        )

    def _batched(self, clips: list[np.ndarray], options: TranscribeOptions) -> list[TranscribeOutput]:
        """One batched pipeline call: clips end to end, one clip per chunk."""
        from faster_whisper import BatchedInferencePipeline

        gap = np.zeros(SAMPLE_RATE // 10, dtype=np.float32)  # keeps chunk edges off each other's samples
        offsets, pieces, cursor = [], [], 0
        for clip in clips:
            offsets.append(cursor)
            pieces += [clip, gap]
            cursor += clip.size + gap.size
        joined = np.concatenate(pieces)
        bounds = [(o / SAMPLE_RATE, (o + c.size) / SAMPLE_RATE) for o, c in zip(offsets, clips, strict=True)]
        pipeline = BatchedInferencePipeline(self.model)  # holds per-call state: one per call
        segments, info = pipeline.transcribe(
            joined,
            language=self._language(options) or "en",
            task=options.task,
            beam_size=options.beam_size,
            word_timestamps=options.word_timestamps,
            clip_timestamps=[{"start": s, "end": e} for s, e in bounds],
            batch_size=len(clips),
            vad_filter=False,
        )
        per_clip: list[list[SegmentText]] = [[] for _ in clips]
        for seg in segments:
            k = _clip_of(seg.start, bounds)
            shift = bounds[k][0]
            per_clip[k].append(_segment(seg, shift=shift, limit=bounds[k][1] - shift))
        return [
            TranscribeOutput(
                str(info.language), float(info.language_probability), clip.size / SAMPLE_RATE, segs
            )
            for clip, segs in zip(clips, per_clip, strict=True)
        ]


def _clip_of(start: float, bounds: list[tuple[float, float]]) -> int:
    for k, (_, end) in enumerate(bounds):
        if start < end:
            return k
    return len(bounds) - 1


def _segment(seg: Any, *, shift: float = 0.0, limit: float | None = None) -> SegmentText:
    def t(value: float) -> float:
        v = max(0.0, float(value) - shift)
        return round(min(v, limit) if limit is not None else v, 3)

    words = [
        WordTiming(t(w.start), t(w.end), str(w.word).strip(), float(w.probability)) for w in (seg.words or [])
    ]
    return SegmentText(t(seg.start), t(seg.end), str(seg.text).strip(), words)


def _cuda_available() -> bool:
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count()) > 0
    except Exception:  # no CUDA runtime at all
        return False
