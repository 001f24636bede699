"""``audio.transcribe``: speech to text with faster-whisper, optionally attributed to speakers.

Params: ``language`` (ISO code; absent or ``auto`` = detect), ``task``
(``transcribe`` | ``translate``), ``beam_size`` (1-10, default 5),
``vad_filter``, ``word_timestamps``, and ``diarize`` (needs a model whose
registry entry configures a ``diarizer``; implies word timestamps, and takes
``num_speakers`` / ``min_speakers`` / ``max_speakers`` too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.models.whisper import (
    SAMPLE_RATE,
    TranscribeInput,
    TranscribeOptions,
    TranscribeOutput,
    WhisperRuntime,
)
from altlas.pipelines.audio import decode_audio
from altlas.pipelines.audio_params import bool_param, str_param
from altlas.pipelines.base import Output, PipelineLimits, Prepared, int_param
from altlas.pipelines.diarization import SpeakerRequest, diarize, speaker_count
from altlas.pipelines.speakers import SpeakerCount
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import ParamValue, SpeakerTurn, Transcription, TranscriptSegment, Word


@dataclass(frozen=True)
class TranscriptionItem:
    """A decoded clip, its decoding options and, when asked, speaker hints."""

    request: TranscribeInput
    speakers: SpeakerCount | None


def _speaker_at(start: float, end: float, turns: list[SpeakerTurn]) -> str | None:
    """The speaker overlapping [start, end] most; the nearest turn when none overlaps."""
    if not turns:
        return None
    overlaps = [(min(end, t.end) - max(start, t.start), t.speaker) for t in turns]
    best = max(overlaps, key=lambda o: o[0])
    if best[0] > 0:
        return best[1]
    middle = (start + end) / 2
    return min(turns, key=lambda t: min(abs(middle - t.start), abs(middle - t.end))).speaker


def to_transcription(out: TranscribeOutput, turns: list[SpeakerTurn] | None) -> Transcription:
    """The output record; with turns, every word and segment names its speaker."""
    words: list[Word] = []
    segments: list[TranscriptSegment] = []
    for seg in out.segments:
        seg_words = [
            Word(
                start=w.start,
                end=w.end,
                word=w.word,
                probability=round(w.probability, 4),
                speaker=_speaker_at(w.start, w.end, turns) if turns is not None else None,
            )
            for w in seg.words
        ]
        words += seg_words
        speaker = None
        if turns is not None:
            votes: dict[str, float] = {}
            for w in seg_words:
                if w.speaker is not None:
                    votes[w.speaker] = votes.get(w.speaker, 0.0) + max(w.end - w.start, 0.01)
            speaker = max(votes, key=lambda k: votes[k]) if votes else _speaker_at(seg.start, seg.end, turns)
        segments.append(TranscriptSegment(start=seg.start, end=seg.end, text=seg.text, speaker=speaker))
    return Transcription(
        text=" ".join(s.text for s in segments if s.text).strip(),
        language=out.language,
        language_probability=round(out.language_probability, 4),
        duration_s=round(out.duration_s, 3),
        segments=segments,
        words=words,
    )


class TranscriptionPipeline:
    """``audio.transcribe`` on a faster-whisper model."""

    task = "audio.transcribe"
    decodes_anywhere = True  # prepare() needs only its arguments: a decoder process may run it

    def __init__(self, limits: PipelineLimits | None = None) -> None:
        self.limits = limits or PipelineLimits()

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Validate params, then decode to 16 kHz mono."""
        if not isinstance(payload, bytes):
            raise InvalidRequestError("audio payload must be bytes")
        language = str_param(params, "language", None)
        if language == "auto":
            language = None
        if language is not None and not (language.isalpha() and 2 <= len(language) <= 3):
            raise InvalidRequestError(
                f"param language must be an ISO 639-1 code or auto, got {language!r}",
                code=ErrorCode.INVALID_PARAMS,
            )
        task = str_param(params, "task", "transcribe", choices=("transcribe", "translate")) or "transcribe"
        wants_speakers = bool_param(params, "diarize", False)
        if wants_speakers and not isinstance(spec.params.get("diarizer"), dict):
            raise InvalidRequestError(
                f"model {spec.key} has no diarizer configured (registry params.diarizer)",
                code=ErrorCode.INVALID_PARAMS,
            )
        options = TranscribeOptions(
            language=language.lower() if language else None,
            task=task,
            beam_size=int_param(params, "beam_size", 5, lo=1, hi=10),
            vad_filter=bool_param(params, "vad_filter", False),
            word_timestamps=bool_param(params, "word_timestamps", False) or wants_speakers,
        )
        speakers = speaker_count(params) if wants_speakers else None
        audio = decode_audio(
            payload,
            max_seconds=self.limits.max_audio_seconds,
            max_samples=self.limits.max_audio_samples,
            target_rate=SAMPLE_RATE,
        )
        return Prepared(TranscriptionItem(TranscribeInput(audio.samples, options), speakers), params)

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Transcribe the batch in one model call; diarize the clips that asked for it."""
        data: list[TranscriptionItem] = [item.data for item in items]
        outputs = runtime.predict_batch([d.request for d in data])
        diarizer = runtime.diarizer if isinstance(runtime, WhisperRuntime) else None
        results: list[Output] = []
        for d, out in zip(data, outputs, strict=True):
            if isinstance(out, Exception):
                results.append(out)
                continue
            turns: list[SpeakerTurn] | None = None
            if d.speakers is not None:
                if diarizer is None:
                    results.append(
                        InvalidRequestError("this model has no diarizer", code=ErrorCode.INVALID_PARAMS)
                    )
                    continue
                (found,) = diarize(diarizer, [SpeakerRequest(d.request.audio, d.speakers)])
                if isinstance(found, Exception):
                    results.append(found)
                    continue
                turns = found
            results.append(to_transcription(out, turns))
        return results
