"""Audio pipelines without a broker: classification, VAD, diarization, transcription with speakers, TTS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altlas.models.audio_features import log_mel_spectrogram
from altlas.models.espeak import EspeakRuntime
from altlas.models.onnx import OnnxRuntime
from altlas.models.registry import ModelRegistry, ModelSpec
from altlas.models.runtime import ModelRuntime, create_runtime
from altlas.pipelines.audio import decode_audio
from altlas.pipelines.audio_classification import AudioClassificationPipeline
from altlas.pipelines.base import PipelineLimits
from altlas.pipelines.diarization import DiarizationPipeline
from altlas.pipelines.transcription import TranscriptionPipeline
from altlas.pipelines.tts import SpeechPipeline, TextSpeechPipeline
from altlas.schemas.errors import ErrorCode, InvalidRequestError, PayloadTooLargeError
from altlas.schemas.types import AudioClassification, Diarization, Speech, Transcription
from tests.fixtures_audio import (
    RATE,
    VOICE_A,
    VOICE_B,
    Conversation,
    audio_registry_doc,
    espeak,
    silence,
    tone,
    wav_bytes,
    word_recall,
)


@pytest.fixture(scope="module")
def registry(
    whisper_dir: Path, piper_voice: Path, ge2e_weights: Path, silero_vad_onnx: Path, audio_models: Path
) -> ModelRegistry:
    return ModelRegistry.from_dict(
        audio_registry_doc(whisper_dir, piper_voice, ge2e_weights, silero_vad_onnx, audio_models)
    )


_loaded: dict[str, ModelRuntime] = {}


def loaded(registry: ModelRegistry, ref: str) -> ModelRuntime:
    """One loaded runtime per model for the whole module."""
    if ref not in _loaded:
        runtime = create_runtime(registry.get(ref))
        runtime.load()
        _loaded[ref] = runtime
    return _loaded[ref]


def run_one(
    pipeline: Any, runtime: ModelRuntime, payload: bytes | str, params: dict[str, Any] | None = None
) -> Any:
    (out,) = pipeline.run(runtime, [pipeline.prepare(payload, params or {}, runtime.spec)])
    return out


# ---------------------------------------------------------------- classification
def test_band_classifier_labels_each_second_of_a_low_then_high_tone(registry: ModelRegistry) -> None:
    runtime = loaded(registry, "band")
    clip = np.concatenate([tone(300, 1.0), tone(5000, 1.0), tone(300, 0.5)])
    out = run_one(AudioClassificationPipeline(), runtime, wav_bytes(clip), {"threshold": 0.5, "top_k": 2})
    assert isinstance(out, AudioClassification)
    assert [(s.start, s.end, s.label) for s in out.segments] == [
        (0.0, 1.0, "low"),
        (1.0, 2.0, "high"),
        (2.0, 2.5, "low"),
    ]
    assert [lab.label for lab in out.labels] == ["low", "high"]


def test_band_classifier_scores_are_exactly_the_models_on_our_log_mels(registry: ModelRegistry) -> None:
    runtime = loaded(registry, "band")
    assert isinstance(runtime, OnnxRuntime)
    clip = tone(700, 1.0, amplitude=0.3)
    mel = log_mel_spectrogram(clip, RATE, n_fft=400, hop_length=160, n_mels=32)
    logits = np.array([mel[:, :16].mean(), mel[:, 16:].mean()])
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    out = run_one(AudioClassificationPipeline(), runtime, wav_bytes(clip), {"threshold": 0.0})
    assert out.segments[0].score == pytest.approx(want.max(), abs=1e-4)
    assert {lab.label: lab.score for lab in out.labels}["low"] == pytest.approx(want[0], abs=1e-5)


def test_a_batch_of_clips_classifies_like_single_calls(registry: ModelRegistry) -> None:
    runtime = loaded(registry, "band")
    pipeline = AudioClassificationPipeline()
    clips = [wav_bytes(tone(f, d)) for f, d in ((300, 1.5), (6000, 2.0), (900, 0.4))]
    items = [pipeline.prepare(c, {}, runtime.spec) for c in clips]
    assert pipeline.run(runtime, items) == [pipeline.run(runtime, [i])[0] for i in items]


def test_vad_classifier_finds_speech_between_silences(registry: ModelRegistry) -> None:
    runtime = loaded(registry, "vad")
    speech = espeak("Please send me the transcript of the meeting.", trim=True)
    clip = np.concatenate([silence(1.5), speech, silence(1.0)])
    out = run_one(AudioClassificationPipeline(), runtime, wav_bytes(clip))
    labels = [s.label for s in out.segments]
    assert labels[0] == "non-speech" and labels[-1] == "non-speech" and "speech" in labels
    first = next(s for s in out.segments if s.label == "speech")
    last = [s for s in out.segments if s.label == "speech"][-1]
    assert abs(first.start - 1.5) < 0.15 and abs(last.end - (1.5 + speech.size / RATE)) < 0.25
    speech_share = next(lab.score for lab in out.labels if lab.label == "speech")
    assert speech_share == pytest.approx(speech.size / clip.size, abs=0.1)


def test_classify_params_are_validated(registry: ModelRegistry) -> None:
    runtime = loaded(registry, "band")
    for bad in ({"top_k": 0}, {"threshold": 2.0}, {"threshold": "high"}):
        with pytest.raises(InvalidRequestError) as caught:
            AudioClassificationPipeline().prepare(wav_bytes(tone(300, 1.0)), bad, runtime.spec)
        assert caught.value.code is ErrorCode.INVALID_PARAMS


# ---------------------------------------------------------------- diarization
def _assert_matches_truth(
    turns: list[tuple[float, float, str]], conv: Conversation, tolerance: float = 0.5
) -> None:
    assert len(turns) == len(conv.turns), turns
    mapping: dict[str, str] = {}
    for (start, end, speaker), (t_start, t_end, voice) in zip(turns, conv.turns, strict=True):
        assert mapping.setdefault(voice, speaker) == speaker
        assert abs(start - t_start) <= tolerance and abs(end - t_end) <= tolerance, (turns, conv.turns)
    assert len(set(mapping.values())) == 2


def test_two_espeak_voices_are_two_speakers_with_turns_within_half_a_second(
    registry: ModelRegistry, two_voices: Conversation
) -> None:
    out = run_one(DiarizationPipeline(), loaded(registry, "speakers"), wav_bytes(two_voices.audio))
    assert isinstance(out, Diarization)
    assert out.num_speakers == 2
    _assert_matches_truth([(t.start, t.end, t.speaker) for t in out.turns], two_voices)
    assert out.turns[0].speaker == "SPEAKER_00"


def test_num_speakers_param_is_obeyed(registry: ModelRegistry, two_voices: Conversation) -> None:
    runtime = loaded(registry, "speakers")
    one = run_one(DiarizationPipeline(), runtime, wav_bytes(two_voices.audio), {"num_speakers": 1})
    assert one.num_speakers == 1
    capped = run_one(DiarizationPipeline(), runtime, wav_bytes(two_voices.audio), {"max_speakers": 1})
    assert capped.num_speakers == 1
    two = run_one(DiarizationPipeline(), runtime, wav_bytes(two_voices.audio), {"num_speakers": 2})
    _assert_matches_truth([(t.start, t.end, t.speaker) for t in two.turns], two_voices)


def test_one_voice_is_one_speaker(registry: ModelRegistry) -> None:
    clip = np.concatenate(
        [
            espeak("The first sentence is spoken here.", VOICE_B),
            silence(0.4),
            espeak("And the same voice goes on talking.", VOICE_B),
        ]
    )
    out = run_one(DiarizationPipeline(), loaded(registry, "speakers"), wav_bytes(clip))
    assert out.num_speakers == 1


def test_silence_has_no_speakers(registry: ModelRegistry) -> None:
    out = run_one(DiarizationPipeline(), loaded(registry, "speakers"), wav_bytes(silence(2.0)))
    assert out.num_speakers == 0 and out.turns == []


@pytest.mark.parametrize(
    "params", [{"num_speakers": 0}, {"min_speakers": 3, "max_speakers": 2}, {"max_speakers": "two"}]
)
def test_speaker_count_params_are_validated(registry: ModelRegistry, params: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        DiarizationPipeline().prepare(wav_bytes(tone(300, 1.0)), params, registry.get("speakers"))
    assert caught.value.code is ErrorCode.INVALID_PARAMS


# ---------------------------------------------------------------- transcription
def test_transcribe_with_diarize_attributes_each_words_speaker(
    registry: ModelRegistry, two_voices: Conversation
) -> None:
    out = run_one(
        TranscriptionPipeline(),
        loaded(registry, "whisper-tiny-en"),
        wav_bytes(two_voices.audio),
        {"diarize": True},
    )
    assert isinstance(out, Transcription)
    assert word_recall(" ".join(two_voices.texts), out.text) >= 0.8, out.text
    assert out.words and all(w.speaker is not None for w in out.words)
    by_voice: dict[str, set[str]] = {}
    for start, end, voice in two_voices.turns:
        inside = [w for w in out.words if start - 0.3 <= (w.start + w.end) / 2 <= end + 0.3]
        assert inside
        majority = max({w.speaker for w in inside}, key=lambda s: sum(w.speaker == s for w in inside))
        assert sum(w.speaker == majority for w in inside) / len(inside) >= 0.8
        by_voice.setdefault(voice, set()).add(str(majority))
    assert by_voice[VOICE_A].isdisjoint(by_voice[VOICE_B])
    assert all(len(s) == 1 for s in by_voice.values())


@pytest.mark.parametrize(
    "params",
    [
        {"language": "english!"},
        {"task": "summarise"},
        {"beam_size": 0},
        {"word_timestamps": "maybe"},
        {"vad_filter": 3},
    ],
)
def test_transcribe_params_are_validated(registry: ModelRegistry, params: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        TranscriptionPipeline().prepare(wav_bytes(tone(300, 1.0)), params, registry.get("whisper-tiny-en"))
    assert caught.value.code is ErrorCode.INVALID_PARAMS


def test_diarize_on_a_model_without_diarizer_is_an_invalid_param(whisper_dir: Path) -> None:
    plain = ModelSpec("w", "1", "audio.transcribe", "faster-whisper", whisper_dir)
    with pytest.raises(InvalidRequestError, match="no diarizer") as caught:
        TranscriptionPipeline().prepare(wav_bytes(tone(300, 1.0)), {"diarize": True}, plain)
    assert caught.value.code is ErrorCode.INVALID_PARAMS


def test_audio_longer_than_the_limit_is_refused_before_transcription(registry: ModelRegistry) -> None:
    pipeline = TranscriptionPipeline(PipelineLimits(max_audio_seconds=5))
    with pytest.raises(PayloadTooLargeError):
        pipeline.prepare(wav_bytes(silence(6.0)), {}, registry.get("whisper-tiny-en"))


# ---------------------------------------------------------------- TTS
def test_tts_output_is_a_wav_whose_speech_whisper_understands(registry: ModelRegistry) -> None:
    text = "Please send me the transcript of the meeting."
    out = run_one(
        SpeechPipeline(), loaded(registry, "espeak"), text.encode(), {"voice": VOICE_A, "sample_rate": 16000}
    )
    assert isinstance(out, Speech) and out.format == "wav" and out.sample_rate == 16000
    audio = decode_audio(out.audio, max_seconds=60)
    assert audio.sample_rate == 16000 and audio.duration_s == pytest.approx(out.duration_s, abs=0.01)
    assert float(np.abs(audio.samples).max()) > 0.1  # not silence
    heard = run_one(TranscriptionPipeline(), loaded(registry, "whisper-tiny-en"), out.audio)
    assert word_recall(text, heard.text) >= 0.8, heard.text


def test_text_tts_takes_a_string_and_piper_speaks_it(registry: ModelRegistry) -> None:
    out = run_one(TextSpeechPipeline(), loaded(registry, "joe"), "Hello from the text topic.", {"speed": 1.5})
    assert isinstance(out, Speech) and out.sample_rate == 22050
    assert 0.5 < out.duration_s < 3.0


@pytest.mark.parametrize(
    ("payload", "params", "error"),
    [
        (b"\xff\xfe\x00bad", {}, InvalidRequestError),
        (b"   ", {}, InvalidRequestError),
        (b"x" * 3000, {}, PayloadTooLargeError),
        (b"hello", {"speed": 10}, InvalidRequestError),
        (b"hello", {"sample_rate": 100}, InvalidRequestError),
        (b"hello", {"voice": ["a", "b"]}, InvalidRequestError),
    ],
)
def test_tts_input_is_validated_before_synthesis(
    registry: ModelRegistry, payload: bytes, params: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        SpeechPipeline().prepare(payload, params, registry.get("espeak"))


def test_an_unknown_espeak_voice_fails_only_its_own_request(registry: ModelRegistry) -> None:
    runtime = loaded(registry, "espeak")
    assert isinstance(runtime, EspeakRuntime)
    pipeline = SpeechPipeline()
    items = [
        pipeline.prepare(b"one", {}, runtime.spec),
        pipeline.prepare(b"two", {"voice": "zz-nonexistent"}, runtime.spec),
    ]
    good, bad = pipeline.run(runtime, items)
    assert isinstance(good, Speech) and isinstance(bad, Exception)
