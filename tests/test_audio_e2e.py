"""Audio end to end through the real broker: every task on real models, bad input to dead letters."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.pipelines.audio import decode_audio
from altlas.schemas.types import (
    AudioClassification,
    Diarization,
    ResultStatus,
    Speech,
    Transcription,
)
from tests.conftest import Running, connect, isolated_settings, serving
from tests.fixtures_audio import Conversation, espeak, ffmpeg_encode, silence, wav_bytes, word_recall

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Kafka carries the requests to the model.",
    "Please send me the transcript of the meeting.",
    "Sure, it will arrive on the results topic in a moment.",
]


@pytest.fixture
def audio_settings(kafka_bootstrap: str, audio_registry: Path) -> Settings:
    return isolated_settings(
        kafka_bootstrap,
        audio_registry,
        modalities=["audio", "text"],
        limits={"max_audio_seconds": 30.0},
        batching={"max_wait_ms": 50},
    )


@pytest.fixture
async def audio_client(audio_settings: Settings) -> AsyncIterator[AltlasClient]:
    async with connect(audio_settings) as c:
        yield c


@pytest.fixture
async def audio_running(audio_settings: Settings) -> AsyncIterator[Running]:
    async with serving(audio_settings) as run:
        yield run


async def _drain(reader: Any, want: int, timeout_s: float = 60.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got.extend(await reader.read(0.5))
    return got


async def test_every_audio_task_is_answered_with_real_models(
    audio_running: Running, audio_client: AltlasClient, two_voices: Conversation
) -> None:
    client = audio_client
    speech = [espeak(s) for s in SENTENCES]
    requests = [
        # A micro-batch of clips for Whisper, in four containers.
        make_request("audio", "transcribe", wav_bytes(speech[0]), request_id="asr-wav"),
        make_request("audio", "transcribe", ffmpeg_encode(speech[1], "mp3"), request_id="asr-mp3"),
        make_request("audio", "transcribe", ffmpeg_encode(speech[2], "ogg"), request_id="asr-opus"),
        make_request(
            "audio",
            "transcribe",
            ffmpeg_encode(speech[3], "webm"),
            request_id="asr-webm",
            params={"word_timestamps": True},
        ),
        make_request(
            "audio", "tts", b"Please send me the transcript of the meeting.", request_id="tts-espeak"
        ),
        make_request("audio", "tts", b"The orchestrator speaks.", model="joe", request_id="tts-piper"),
        make_request(
            "audio",
            "classify",
            wav_bytes(np.concatenate([silence(1.0), speech[0], silence(1.0)])),
            request_id="vad",
        ),
        make_request("audio", "diarize", wav_bytes(two_voices.audio), request_id="diarize"),
        make_request(
            "audio",
            "transcribe",
            wav_bytes(two_voices.audio),
            params={"diarize": True},
            request_id="asr-speakers",
        ),
    ]
    async with client.reader(client.topics.results("audio")) as reader:
        await client.send_many(requests)
        results = await client.collect(reader, "audio", [r.request_id for r in requests], timeout_s=180)
    assert set(results) == {r.request_id for r in requests}
    for rid, result in results.items():
        assert result.status is ResultStatus.OK, (rid, result.error)

    for rid, sentence in zip(("asr-wav", "asr-mp3", "asr-opus", "asr-webm"), SENTENCES, strict=True):
        out = results[rid].output
        assert isinstance(out, Transcription) and out.language == "en"
        assert word_recall(sentence, out.text) >= 0.7, (rid, out.text)
    assert results["asr-webm"].output.words  # type: ignore[union-attr]
    assert max(results[r].timings.batch_size for r in ("asr-wav", "asr-mp3", "asr-opus", "asr-webm")) > 1

    for rid in ("tts-espeak", "tts-piper"):
        out = results[rid].output
        assert isinstance(out, Speech) and out.format == "wav"
        audio = decode_audio(out.audio, max_seconds=60)
        assert audio.sample_rate == out.sample_rate == 22050
        assert audio.duration_s == pytest.approx(out.duration_s, abs=0.01) and out.duration_s > 1.0
        assert float(np.sqrt(np.mean(audio.samples**2))) > 0.02  # speech, not silence

    vad = results["vad"].output
    assert isinstance(vad, AudioClassification)
    speech_segments = [s for s in vad.segments if s.label == "speech"]
    assert speech_segments and abs(speech_segments[0].start - 1.0) < 0.15

    diarization = results["diarize"].output
    assert isinstance(diarization, Diarization) and diarization.num_speakers == 2
    assert len(diarization.turns) == len(two_voices.turns)
    for turn, (start, end, _) in zip(diarization.turns, two_voices.turns, strict=True):
        assert abs(turn.start - start) <= 0.5 and abs(turn.end - end) <= 0.5

    attributed = results["asr-speakers"].output
    assert isinstance(attributed, Transcription)
    speakers = [w.speaker for w in attributed.words]
    assert None not in speakers and len(set(speakers)) == 2


async def test_tts_on_the_text_topic_is_spoken_back(
    audio_running: Running, audio_client: AltlasClient
) -> None:
    request = make_request(
        "text", "tts", "Kafka carries the requests to the model.", params={"sample_rate": 16000}
    )
    result = await audio_client.request(request, timeout_s=120)
    assert result is not None and result.status is ResultStatus.OK, result
    speech = result.output
    assert isinstance(speech, Speech) and speech.sample_rate == 16000
    heard = await audio_client.request(make_request("audio", "transcribe", speech.audio), timeout_s=120)
    assert heard is not None and isinstance(heard.output, Transcription)
    assert word_recall("Kafka carries the requests to the model.", heard.output.text) >= 0.8


async def test_corrupt_audio_gets_an_error_and_a_dead_letter_and_the_stream_continues(
    audio_running: Running, audio_client: AltlasClient
) -> None:
    client = audio_client
    good = wav_bytes(espeak("Hello world."))
    requests = [
        make_request("audio", "transcribe", b"RIFF\x10\x00\x00\x00WAVEfmt garbage", request_id="bad-wav"),
        make_request("audio", "transcribe", b"\x00" * 100, request_id="not-audio"),
        make_request("audio", "diarize", wav_bytes(silence(31.0)[::2], 8000), request_id="too-long"),
        make_request("audio", "diarize", good, model="broken-speakers", request_id="broken-model"),
        make_request("audio", "classify", good, params={"top_k": -1}, request_id="bad-params"),
        # About 2 minutes of speech: 5 MB of WAV, over the 1 MB result limit.
        make_request("audio", "tts", ("All work and no play. " * 90).encode(), request_id="too-much-speech"),
        make_request("audio", "transcribe", good, request_id="good"),
    ]
    dlq = client.reader(client.topics.dead_letter)
    await dlq.start()
    try:
        async with client.reader(client.topics.results("audio")) as reader:
            await client.send_many(requests)
            results = await client.collect(reader, "audio", [r.request_id for r in requests], timeout_s=120)
        letters = [client.decode_dead_letter(r.value) for r in await _drain(dlq, 6)]
    finally:
        await dlq.stop()
    codes = {rid: (r.error.code if r.error else None) for rid, r in results.items()}
    assert codes == {
        "bad-wav": "INVALID_PAYLOAD",
        "not-audio": "INVALID_PAYLOAD",
        "too-long": "PAYLOAD_TOO_LARGE",
        "broken-model": "MODEL_UNAVAILABLE",
        "bad-params": "INVALID_PARAMS",
        "too-much-speech": "RESULT_TOO_LARGE",
        "good": None,
    }
    assert "hello" in results["good"].output.text.lower()  # type: ignore[union-attr]
    assert {(d.request_id, d.error_code) for d in letters} == {
        (rid, code) for rid, code in codes.items() if code is not None
    }
