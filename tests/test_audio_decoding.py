"""Audio bytes to samples: every accepted container, limits checked before decoding, hostile input refused."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from altlas.pipelines.audio import decode_audio, encode_wav, sniff
from altlas.schemas.errors import ErrorCode, InvalidRequestError, PayloadTooLargeError
from tests.fixtures_audio import RATE, ffmpeg_encode, tone, wav_bytes


@pytest.mark.parametrize(
    ("fmt", "tolerance_s"),
    [("wav", 0.001), ("flac", 0.001), ("mp3", 0.1), ("ogg", 0.03), ("webm", 0.03)],
)
def test_every_accepted_container_decodes_to_mono_16k_of_the_right_length(
    fmt: str, tolerance_s: float
) -> None:
    if fmt in ("wav", "flac"):
        rate = 44_100 if fmt == "wav" else RATE  # the WAV also needs resampling
        mono = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)).astype(np.float32)
        data = wav_bytes(np.stack([mono, mono], axis=1), rate, fmt.upper())
    else:
        data = ffmpeg_encode(tone(440, 2.0), fmt)
    expected_s = 2.0
    assert sniff(data) == fmt
    audio = decode_audio(data, max_seconds=60, target_rate=RATE)
    assert audio.sample_rate == RATE and audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    assert abs(audio.duration_s - expected_s) <= tolerance_s
    # The tone survives: its spectrum peaks at 440 Hz.
    spectrum = np.abs(np.fft.rfft(audio.samples[: RATE // 2]))
    assert abs(np.argmax(spectrum) * 2 - 440) <= 4


def test_resampling_keeps_duration_and_pitch() -> None:
    source = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(22_050) / 22_050)).astype(np.float32)
    audio = decode_audio(wav_bytes(source, 22_050), max_seconds=10, target_rate=RATE)
    assert audio.samples.size == RATE
    spectrum = np.abs(np.fft.rfft(audio.samples))
    assert abs(int(np.argmax(spectrum)) - 1000) <= 1


def test_a_wav_longer_than_the_limit_is_refused_from_its_header() -> None:
    with pytest.raises(PayloadTooLargeError, match=r"declares 12\.0 s, limit is 10 s"):
        decode_audio(wav_bytes(tone(300, 12.0)), max_seconds=10)


def test_compressed_audio_past_the_limit_is_refused() -> None:
    with pytest.raises(PayloadTooLargeError):
        decode_audio(ffmpeg_encode(tone(300, 4.0), "mp3"), max_seconds=2)


def test_a_stream_without_a_declared_length_stops_decoding_at_the_limit() -> None:
    # WebM written to a pipe carries no duration: only the incremental check can stop it.
    with pytest.raises(PayloadTooLargeError, match="runs past the limit of 2 s"):
        decode_audio(ffmpeg_encode(tone(300, 6.0), "webm"), max_seconds=2)


def test_a_stream_without_a_declared_length_stops_at_the_sample_limit_too() -> None:
    # Within the duration limit but past the samples one: at 384 kHz, 600 s of a stream that declares
    # no length would be 230 million samples, decoded before anything stopped it.
    with pytest.raises(PayloadTooLargeError, match="16000 samples"):
        decode_audio(ffmpeg_encode(tone(300, 2.0), "webm"), max_seconds=600, max_samples=16_000)


def test_audio_cut_into_tiny_frames_is_refused_by_its_frame_count() -> None:
    # Every decoded frame costs some Python: a file of 16-sample frames held a decode thread for 20 s
    # inside the duration limit. Opus's 2.5 ms frames: 400 a second, over the 200 allowed.
    tiny = ffmpeg_encode(tone(300, 2.0), "webm", options=("-frame_duration", "2.5"))
    with pytest.raises(PayloadTooLargeError, match="frames"):
        decode_audio(tiny, max_seconds=3)
    assert decode_audio(tiny, max_seconds=5).duration_s == pytest.approx(2.0, abs=0.05)
    assert decode_audio(ffmpeg_encode(tone(300, 2.0), "webm"), max_seconds=3).duration_s > 1.9  # 20 ms frames


def _wav_header(rate: int, channels: int, data: bytes) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is plain text",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"RIFF\x00\x00\x00\x00WAVE",
        _wav_header(16_000, 1, b"")[:30],
        b"fLaC" + b"\x00" * 50,
        b"OggS" + bytes(range(60)),
        b"ID3" + b"\x03\x00" + b"\x00" * 40,
        b"\x1a\x45\xdf\xa3" + b"\x00" * 30,
    ],
)
def test_corrupt_or_unsupported_audio_is_an_invalid_payload(data: bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_audio(data, max_seconds=60, target_rate=RATE)
    assert caught.value.code is ErrorCode.INVALID_PAYLOAD


def test_a_wav_declaring_an_absurd_channel_count_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        decode_audio(_wav_header(16_000, 1000, b"\x00" * 4000), max_seconds=60)


def test_encode_wav_round_trips_16_bit_samples() -> None:
    samples = (tone(440, 0.5) * 32767).astype(np.int16)
    audio = decode_audio(encode_wav(samples, 16_000), max_seconds=5)
    np.testing.assert_allclose(audio.samples, samples / 32768.0, atol=1e-6)


def flac_bomb(seconds: float = 10.0, channels: int = 8, rate: int = 384_000) -> bytes:
    """Silence that compresses to a few KB and declares channels x rate x seconds samples."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(
        buf, np.zeros((int(seconds * rate), channels), dtype=np.int16), rate, format="FLAC", subtype="PCM_16"
    )
    return buf.getvalue()


def test_many_channels_are_downmixed_block_by_block_never_held_whole() -> None:
    """10 s of 8-channel 384 kHz silence is 32 KB; decoded whole it would be 117 MiB of float32."""
    import tracemalloc

    bomb = flac_bomb()
    assert len(bomb) < 200_000
    tracemalloc.start()
    try:
        audio = decode_audio(bomb, max_seconds=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert audio.sample_rate == 384_000 and audio.samples.size == 3_840_000
    mono = audio.samples.nbytes
    assert peak < 2 * mono + 16 * 2**20, (
        f"peak {peak / 2**20:.0f} MiB for a {mono / 2**20:.0f} MiB mono track"
    )


def test_samples_times_channels_are_limited_from_the_header() -> None:
    with pytest.raises(PayloadTooLargeError, match="channels"):
        decode_audio(flac_bomb(seconds=1.0), max_seconds=60, max_samples=1_000_000)
