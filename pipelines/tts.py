"""Text to speech (``audio.tts`` with UTF-8 bytes, ``text.tts`` with a string): WAV 16-bit mono out.

Backends: ``espeak-ng`` (formant, always available, the default voice),
``piper`` (neural VITS voices on ONNX Runtime) and ``coqui`` (users' Coqui
models). Params: ``voice`` (an espeak-ng voice such as ``en-us+f3``, a Piper
or Coqui speaker), ``speed`` (0.25-4.0), ``sample_rate`` (resample the output,
8,000-48,000 Hz). A result must fit ``limits.max_result_bytes`` (1 MB by
default: about 23 s at 22,050 Hz, 32 s at 16 kHz); a longer one is answered
RESULT_TOO_LARGE, so the text is capped by the registry param ``max_chars``
(default 2,000) before any work is done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.models.speech_synthesis import SpeechInput, SynthesizedSpeech
from altlas.pipelines.audio import Audio, encode_wav, resample
from altlas.pipelines.audio_params import str_param
from altlas.pipelines.base import Output, PipelineLimits, Prepared, float_param
from altlas.schemas.errors import ErrorCode, InvalidRequestError, PayloadTooLargeError
from altlas.schemas.types import ParamValue, Speech

TTS_BACKENDS = ("espeak-ng", "piper", "coqui")


def to_speech(out: SynthesizedSpeech, sample_rate: int | None) -> Speech:
    """WAV bytes at the requested (or the model's) rate."""
    samples, rate = out.samples, out.sample_rate
    if sample_rate is not None and sample_rate != rate:
        converted = resample(Audio(samples.astype(np.float32) / 32768.0, rate), sample_rate)
        samples, rate = converted.samples, sample_rate
    return Speech(
        audio=encode_wav(samples, rate),
        format="wav",
        sample_rate=rate,
        duration_s=round(samples.size / rate, 3),
    )


class SpeechPipeline:
    """``audio.tts``: the payload is UTF-8 text."""

    task = "audio.tts"

    def __init__(self, limits: PipelineLimits | None = None) -> None:
        self.limits = limits or PipelineLimits()

    def _text(self, payload: bytes | str) -> str:
        if isinstance(payload, str):
            return payload
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(f"tts payload is not UTF-8 text: {exc}") from exc

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Check the text and params; nothing to decode."""
        if spec.backend not in TTS_BACKENDS:
            raise InvalidRequestError(f"model {spec.key} ({spec.backend}) cannot speak")
        text = self._text(payload).strip()
        if not text:
            raise InvalidRequestError("nothing to say: the text is empty")
        limit = min(int(spec.params.get("max_chars", 2000)), self.limits.max_text_chars)
        if len(text) > limit:
            raise PayloadTooLargeError(f"text of {len(text)} characters exceeds the tts limit of {limit}")
        voice = str_param(params, "voice", None)
        speed = float_param(params, "speed", 1.0, lo=0.25, hi=4.0)
        rate = float_param(params, "sample_rate", 0, lo=0, hi=48_000)
        if rate and rate < 8000:
            raise InvalidRequestError(
                "param sample_rate must be in [8000, 48000]", code=ErrorCode.INVALID_PARAMS
            )
        return Prepared((SpeechInput(text, voice, speed), int(rate) or None), params)

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Synthesise the batch; encode each as WAV."""
        outputs = runtime.predict_batch([item.data[0] for item in items])
        return [
            out if isinstance(out, Exception) else to_speech(out, item.data[1])
            for item, out in zip(items, outputs, strict=True)
        ]


class TextSpeechPipeline(SpeechPipeline):
    """``text.tts``: the same, for requests on the text topic."""

    task = "text.tts"
