"""``audio.classify``: labels over time from an ONNX classifier on log-mel windows, or voice activity.

ONNX models: the clip is cut into windows (``window_s``, ``hop_s``), each
window's log-mel spectrogram is computed in numpy with the front end the
model was trained on (registry ``params.frontend``: ``sample_rate``,
``n_fft``, ``hop_length``, ``n_mels``, ``fmin``, ``fmax``, ``log_offset``) and
laid out as ``params.layout`` (``mels_frames``, ``frames_mels`` or
``1_mels_frames``); every window of every clip in the micro-batch goes through
one batched ONNX call. ``params.output``: ``logits`` (softmax applied),
``sigmoid`` (multi-label) or ``probabilities``. Labels: ``metadata.labels`` or
the ONNX metadata key ``params.labels_metadata_key``.

``silero-vad`` models: speech / non-speech segments.

Request params: ``top_k`` (clip labels, default 5), ``threshold`` (a window's
best score must reach it to become a segment; VAD: speech probability, 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from altlas.models.audio_features import log_mel_spectrogram, mel_filters
from altlas.models.onnx import OnnxRuntime
from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.models.silero_vad import SAMPLE_RATE as VAD_RATE
from altlas.models.silero_vad import SileroVadRuntime, speech_regions
from altlas.pipelines.audio import decode_audio
from altlas.pipelines.base import Output, PipelineLimits, Prepared, float_param, int_param
from altlas.pipelines.scores import class_labels, softmax
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import AudioClassification, Label, ParamValue, TimedLabel

LAYOUTS = ("mels_frames", "frames_mels", "1_mels_frames")


@dataclass(frozen=True)
class Frontend:
    """The log-mel recipe of one model."""

    sample_rate: int = 16_000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None
    log_offset: float = 1e-6

    @classmethod
    def of(cls, spec: ModelSpec) -> Frontend:
        """From ``params.frontend``."""
        raw = dict(spec.params.get("frontend", {}) or {})
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass(frozen=True)
class Clip:
    """Windows of one clip, as model inputs, with their time ranges."""

    features: list[np.ndarray]
    spans: list[tuple[float, float]]
    samples: np.ndarray
    duration_s: float


def _layout(mel: np.ndarray, layout: str) -> np.ndarray:
    if layout == "frames_mels":
        return mel
    if layout == "1_mels_frames":
        return mel.T[None]
    return np.ascontiguousarray(mel.T)


def window_features(audio: np.ndarray, spec: ModelSpec) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """Log-mel features of each window (zero-padded to full length) and its [start, end) in seconds."""
    front = Frontend.of(spec)
    window_s = float(spec.params.get("window_s", 1.0))
    hop_s = float(spec.params.get("hop_s", window_s))
    layout = str(spec.params.get("layout", "mels_frames"))
    win, hop = round(window_s * front.sample_rate), round(hop_s * front.sample_rate)
    filters = mel_filters(front.sample_rate, front.n_fft, front.n_mels, front.fmin, front.fmax)
    duration = audio.size / front.sample_rate
    count = 1 if audio.size <= win else 1 + -(-(audio.size - win) // hop)
    features, spans = [], []
    for k in range(count):
        start = k * hop
        piece = audio[start : start + win]
        if piece.size < win:
            piece = np.pad(piece, (0, win - piece.size))
        mel = log_mel_spectrogram(
            piece,
            front.sample_rate,
            n_fft=front.n_fft,
            hop_length=front.hop_length,
            filters=filters,
            log_offset=front.log_offset,
        )
        features.append(_layout(mel, layout))
        begin = start / front.sample_rate
        spans.append((round(begin, 3), round(min(duration, begin + hop_s), 3)))
    spans[-1] = (spans[-1][0], round(duration, 3))
    return features, spans


def _scores(raw: np.ndarray, mode: str) -> np.ndarray:
    x = np.asarray(raw, dtype=np.float32).reshape(-1)
    if mode == "logits":
        return softmax(x)
    if mode == "sigmoid":
        return np.asarray(1 / (1 + np.exp(-x)), dtype=np.float32)
    return x


def _merge(runs: list[TimedLabel]) -> list[TimedLabel]:
    merged: list[TimedLabel] = []
    weights: list[float] = []
    for run in runs:
        if merged and merged[-1].label == run.label and abs(merged[-1].end - run.start) < 1e-6:
            last, w = merged[-1], weights[-1]
            span = run.end - run.start
            score = (last.score * w + run.score * span) / max(w + span, 1e-9)
            merged[-1] = TimedLabel(start=last.start, end=run.end, label=run.label, score=score)
            weights[-1] = w + span
        else:
            merged.append(run)
            weights.append(run.end - run.start)
    return [s.model_copy(update={"score": round(s.score, 4)}) for s in merged]


class AudioClassificationPipeline:
    """``audio.classify`` on an ONNX classifier or a Silero VAD."""

    task = "audio.classify"
    decodes_anywhere = True  # prepare() needs only its arguments: a decoder process may run it

    def __init__(self, limits: PipelineLimits | None = None) -> None:
        self.limits = limits or PipelineLimits()

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Validate params, decode at the model's rate and (ONNX) compute the windows' log-mels."""
        if not isinstance(payload, bytes):
            raise InvalidRequestError("audio payload must be bytes")
        int_param(params, "top_k", 5, lo=1, hi=1000)
        float_param(params, "threshold", 0.5, lo=0.0, hi=1.0)
        if spec.backend == "silero-vad":
            audio = decode_audio(
                payload,
                max_seconds=self.limits.max_audio_seconds,
                max_samples=self.limits.max_audio_samples,
                target_rate=VAD_RATE,
            )
            return Prepared(Clip([], [], audio.samples, audio.duration_s), params)
        if spec.backend != "onnx":
            raise InvalidRequestError(
                f"model {spec.key} ({spec.backend}) cannot classify audio", code=ErrorCode.INVALID_PARAMS
            )
        if str(spec.params.get("layout", "mels_frames")) not in LAYOUTS:
            raise InvalidRequestError(f"model {spec.key}: params.layout must be one of {', '.join(LAYOUTS)}")
        rate = Frontend.of(spec).sample_rate
        audio = decode_audio(
            payload,
            max_seconds=self.limits.max_audio_seconds,
            max_samples=self.limits.max_audio_samples,
            target_rate=rate,
        )
        features, spans = window_features(audio.samples, spec)
        return Prepared(Clip(features, spans, np.zeros(0, dtype=np.float32), audio.duration_s), params)

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Classify every window of every clip in one model call."""
        if isinstance(runtime, SileroVadRuntime):
            probs = runtime.predict_batch([item.data.samples for item in items])
            return [self._vad(item, p) for item, p in zip(items, probs, strict=True)]
        return self._onnx(runtime, items)

    # ------------------------------------------------------------ VAD
    @staticmethod
    def _vad(item: Prepared, probs: np.ndarray) -> AudioClassification:
        clip: Clip = item.data
        threshold = float_param(item.params, "threshold", 0.5, lo=0.0, hi=1.0)
        regions = speech_regions(probs, clip.duration_s, threshold=threshold)
        segments: list[TimedLabel] = []
        cursor = 0.0
        for r in regions:
            if r.start - cursor > 1e-3:
                segments.append(
                    TimedLabel(start=round(cursor, 3), end=round(r.start, 3), label="non-speech", score=1.0)
                )
            segments.append(
                TimedLabel(
                    start=round(r.start, 3), end=round(r.end, 3), label="speech", score=round(r.score, 4)
                )
            )
            cursor = r.end
        if clip.duration_s - cursor > 1e-3:
            segments.append(
                TimedLabel(
                    start=round(cursor, 3), end=round(clip.duration_s, 3), label="non-speech", score=1.0
                )
            )
        speech = sum(r.end - r.start for r in regions) / max(clip.duration_s, 1e-9)
        labels = sorted(
            [
                Label(index=0, label="speech", score=round(speech, 4)),
                Label(index=1, label="non-speech", score=round(1 - speech, 4)),
            ],
            key=lambda lab: -lab.score,
        )
        top_k = int_param(item.params, "top_k", 5, lo=1, hi=1000)
        return AudioClassification(labels=labels[:top_k], segments=segments)

    # ------------------------------------------------------------ ONNX
    def _onnx(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        spec = runtime.spec
        name = spec.params.get("input_name")
        if name is None and isinstance(runtime, OnnxRuntime):
            name = runtime.input_names[0]
        feeds = [{name: f} for item in items for f in item.data.features]
        raw = runtime.predict_batch(feeds)
        labels = class_labels(runtime)
        mode = str(spec.params.get("output", "logits"))
        outputs: list[Output] = []
        cursor = 0
        for item in items:
            clip: Clip = item.data
            chunk = raw[cursor : cursor + len(clip.features)]
            cursor += len(clip.features)
            failed = next((r for r in chunk if isinstance(r, Exception)), None)
            if failed is not None:
                outputs.append(failed)
                continue
            scores = np.stack(
                [_scores(next(iter(r.values())) if isinstance(r, dict) else r, mode) for r in chunk]
            )
            outputs.append(self._shape(item.params, clip, scores, labels))
        return outputs

    @staticmethod
    def _shape(
        params: Mapping[str, ParamValue], clip: Clip, scores: np.ndarray, names: list[str]
    ) -> AudioClassification:
        def name(i: int) -> str:
            return names[i] if i < len(names) else str(i)

        top_k = int_param(params, "top_k", 5, lo=1, hi=1000)
        threshold = float_param(params, "threshold", 0.5, lo=0.0, hi=1.0)
        mean = scores.mean(axis=0)
        order = np.argsort(-mean, kind="stable")[: min(top_k, mean.size)]
        runs = []
        for (start, end), row in zip(clip.spans, scores, strict=True):
            best = int(np.argmax(row))
            if row[best] >= threshold:
                runs.append(TimedLabel(start=start, end=end, label=name(best), score=float(row[best])))
        return AudioClassification(
            labels=[Label(index=int(i), label=name(int(i)), score=round(float(mean[i]), 6)) for i in order],
            segments=_merge(runs),
        )
