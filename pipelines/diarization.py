"""``audio.diarize``: who spoke when, from a speaker-embedding model (offline) or a pyannote pipeline.

Params: ``num_speakers`` (exact), ``min_speakers``, ``max_speakers``. With the
``ge2e`` backend, registry params ``window_s``, ``step_s``, ``threshold`` and
``min_turn_s`` tune the clustering (see :mod:`altlas.pipelines.speakers`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from altlas.models.pyannote import DiarizeInput, PyannoteRuntime
from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.models.speaker_embedding import SpeakerEmbeddingRuntime
from altlas.pipelines.audio import decode_audio
from altlas.pipelines.audio_params import optional_int
from altlas.pipelines.base import Output, PipelineLimits, Prepared
from altlas.pipelines.speakers import SAMPLE_RATE, SpeakerCount, WindowPlan, diarize_with_embeddings
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import Diarization, ParamValue, SpeakerTurn

DIARIZATION_BACKENDS = ("ge2e", "pyannote")


@dataclass(frozen=True)
class SpeakerRequest:
    """A clip and the caller's speaker-count hints."""

    audio: np.ndarray
    count: SpeakerCount


def speaker_count(params: Mapping[str, ParamValue]) -> SpeakerCount:
    """num_speakers / min_speakers / max_speakers, validated against each other."""
    exact = optional_int(params, "num_speakers", lo=1, hi=50)
    low = optional_int(params, "min_speakers", lo=1, hi=50)
    high = optional_int(params, "max_speakers", lo=1, hi=50)
    if low is not None and high is not None and low > high:
        raise InvalidRequestError(
            f"min_speakers {low} is above max_speakers {high}", code=ErrorCode.INVALID_PARAMS
        )
    return SpeakerCount(exact=exact, minimum=low or 1, maximum=high or 50)


def window_plan(spec: ModelSpec) -> WindowPlan:
    """Clustering knobs from the registry entry (defaults suit 16 kHz speech)."""
    defaults = WindowPlan()
    p = spec.params
    return WindowPlan(
        window_s=float(p.get("window_s", defaults.window_s)),
        step_s=float(p.get("step_s", defaults.step_s)),
        min_turn_s=float(p.get("min_turn_s", defaults.min_turn_s)),
        merge_gap_s=float(p.get("merge_gap_s", defaults.merge_gap_s)),
        threshold=float(p.get("threshold", defaults.threshold)),
    )


def diarize(runtime: ModelRuntime, requests: Sequence[SpeakerRequest]) -> list[list[SpeakerTurn] | Exception]:
    """Speaker turns of each clip, with whichever diarization backend ``runtime`` is."""
    if isinstance(runtime, SpeakerEmbeddingRuntime):
        plan = window_plan(runtime.spec)
        return [diarize_with_embeddings(runtime, r.audio, r.count, plan) for r in requests]
    if isinstance(runtime, PyannoteRuntime):
        inputs = [
            DiarizeInput(
                r.audio,
                r.count.exact,
                r.count.minimum if r.count.minimum > 1 else None,
                r.count.maximum if r.count.maximum < 50 else None,
            )
            for r in requests
        ]
        out: list[list[SpeakerTurn] | Exception] = []
        for turns in runtime.predict_batch(inputs):
            if isinstance(turns, Exception):
                out.append(turns)
            else:
                out.append([SpeakerTurn(start=t.start, end=t.end, speaker=t.speaker) for t in turns])
        return out
    raise TypeError(f"{runtime.spec.key} ({runtime.spec.backend}) is not a diarization backend")


def to_diarization(turns: list[SpeakerTurn]) -> Diarization:
    """The output record."""
    return Diarization(num_speakers=len({t.speaker for t in turns}), turns=turns)


class DiarizationPipeline:
    """``audio.diarize``."""

    task = "audio.diarize"
    decodes_anywhere = True  # prepare() needs only its arguments: a decoder process may run it

    def __init__(self, limits: PipelineLimits | None = None) -> None:
        self.limits = limits or PipelineLimits()

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Validate the speaker hints, then decode to 16 kHz mono."""
        if not isinstance(payload, bytes):
            raise InvalidRequestError("audio payload must be bytes")
        if spec.backend not in DIARIZATION_BACKENDS:
            raise InvalidRequestError(
                f"model {spec.key} ({spec.backend}) cannot diarize", code=ErrorCode.INVALID_PARAMS
            )
        count = speaker_count(params)
        audio = decode_audio(
            payload,
            max_seconds=self.limits.max_audio_seconds,
            max_samples=self.limits.max_audio_samples,
            target_rate=SAMPLE_RATE,
        )
        return Prepared(SpeakerRequest(audio.samples, count), params)

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Diarize each clip."""
        results = diarize(runtime, [item.data for item in items])
        return [r if isinstance(r, Exception) else to_diarization(r) for r in results]
