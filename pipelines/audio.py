"""Audio bytes to mono float32 samples at the rate a model needs, safely.

The container is recognised from its first bytes (WAV, FLAC, OGG Vorbis/Opus,
MP3, WebM/Matroska). Duration is checked from the header before anything is
decoded; and because a header can lie (or a stream may not declare a length),
compressed streams are decoded incrementally and abandoned as soon as they pass
the limit (in seconds, and in samples: a stream of unknown length at 384 kHz
would otherwise fill 600 s x 384,000 floats), so a small payload can never
expand into hours of samples. Each decoded frame costs some Python, so a file
cut into tiny frames (16 samples each) could hold a decode thread for half a
minute within the duration limit: frames are counted too.
libsndfile reads WAV, FLAC and OGG; FFmpeg (PyAV) reads everything else.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from altlas.pipelines.decode_once import memoized
from altlas.schemas.errors import ErrorCode, InvalidRequestError, PayloadTooLargeError

MAX_CHANNELS = 64
MAX_SAMPLE_RATE = 384_000
#: Frames x channels a payload may declare: what its decoder would have to produce.
MAX_SAMPLES = 64_000_000
_BLOCK_FRAMES = 65_536
#: Decoded frames a file may have per second of the duration limit: 5 ms each on average (Opus,
#: MP3, AAC and Vorbis frames are 20-60 ms; Opus's shortest, 2.5 ms, are for live calls).
MAX_FRAMES_PER_SECOND = 200


@dataclass(frozen=True)
class Audio:
    """Decoded audio: mono float32 in [-1, 1] at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.samples.size / self.sample_rate if self.sample_rate else 0.0


def sniff(data: bytes) -> str | None:
    """Container name from magic bytes, or None when it is none we accept."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0):
        return "mp3"
    return None


def decode_audio(
    data: bytes, *, max_seconds: float, target_rate: int | None = None, max_samples: int = MAX_SAMPLES
) -> Audio:
    """Decode, bound-check, downmix and (optionally) resample encoded audio (once a plan: decode_once)."""
    limits = (max_seconds, target_rate, max_samples)
    return memoized("audio", data, limits, lambda: _decode_audio(data, max_seconds, target_rate, max_samples))


def _decode_audio(data: bytes, max_seconds: float, target_rate: int | None, max_samples: int) -> Audio:
    if not data:
        raise InvalidRequestError("empty audio payload")
    kind = sniff(data)
    if kind is None:
        raise InvalidRequestError("not a supported audio format (WAV, FLAC, MP3, OGG/Opus, WebM)")
    try:
        if kind in ("wav", "flac"):
            audio = _decode_soundfile(data, max_seconds, max_samples)
        else:
            audio = _decode_ffmpeg(data, max_seconds, max_samples)
    except (InvalidRequestError, PayloadTooLargeError):
        raise
    except Exception as exc:  # libsndfile and FFmpeg raise a zoo of error types on corrupt input
        raise InvalidRequestError(f"corrupt {kind} audio: {exc}", code=ErrorCode.INVALID_PAYLOAD) from exc
    if audio.samples.size == 0:
        raise InvalidRequestError(f"{kind} audio holds no samples")
    if not np.isfinite(audio.samples).all():
        raise InvalidRequestError(f"{kind} audio holds NaN or infinite samples")
    if target_rate is not None and audio.sample_rate != target_rate:
        audio = resample(audio, target_rate)
    return audio


def resample(audio: Audio, rate: int) -> Audio:
    """High-quality sample-rate conversion (libsoxr)."""
    import soxr

    out = soxr.resample(audio.samples, audio.sample_rate, rate)
    return Audio(np.ascontiguousarray(out, dtype=np.float32), rate)


def _check_declared(frames: float, rate: float, channels: int, max_seconds: float, max_samples: int) -> None:
    if rate <= 0 or rate > MAX_SAMPLE_RATE:
        raise InvalidRequestError(f"audio declares an impossible sample rate {rate}")
    if channels <= 0 or channels > MAX_CHANNELS:
        raise InvalidRequestError(f"audio declares {channels} channels (limit {MAX_CHANNELS})")
    if frames / rate > max_seconds:
        raise PayloadTooLargeError(f"audio declares {frames / rate:.1f} s, limit is {max_seconds:.0f} s")
    if frames * channels > max_samples:
        raise PayloadTooLargeError(
            f"audio declares {int(frames)} frames x {channels} channels, limit is {max_samples} samples"
        )


def _decode_soundfile(data: bytes, max_seconds: float, max_samples: int) -> Audio:
    """Read in blocks, downmixing each: memory stays one mono track, however many channels it has."""
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        _check_declared(f.frames, f.samplerate, f.channels, max_seconds, max_samples)
        frames = min(f.frames, int(max_seconds * f.samplerate) + 1)
        mono = np.empty(frames, dtype=np.float32)
        done = 0
        for block in f.blocks(_BLOCK_FRAMES, dtype="float32", always_2d=True, frames=frames):
            mono[done : done + len(block)] = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
            done += len(block)
        rate = int(f.samplerate)
    return Audio(mono[:done], rate)


def _decode_ffmpeg(data: bytes, max_seconds: float, max_samples: int) -> Audio:
    import av

    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            raise InvalidRequestError("the container has no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        channels = int(stream.codec_context.channels or 1)
        declared = float(container.duration) / 1_000_000 if container.duration else 0.0
        _check_declared(declared * rate, rate, channels, max_seconds, max_samples)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        # Written in place: the pages of np.empty are only taken as samples arrive, and no second
        # copy is made at the end, as concatenating pieces would.
        mono = np.empty(min(int(max_seconds * rate), max_samples), dtype=np.float32)
        done = 0
        most_frames = int(max_seconds * MAX_FRAMES_PER_SECOND) + 1
        for n, frame in enumerate(container.decode(stream)):
            if n >= most_frames:
                raise PayloadTooLargeError(
                    f"audio in over {most_frames} frames: at most {MAX_FRAMES_PER_SECOND} a second "
                    f"of the {max_seconds:.0f} s limit"
                )
            for out in resampler.resample(frame):
                done = _append(mono, done, out.to_ndarray().reshape(-1), max_seconds)
        for out in resampler.resample(None):
            done = _append(mono, done, out.to_ndarray().reshape(-1), max_seconds)
    return Audio(mono[:done], rate)


def _append(mono: np.ndarray, done: int, piece: np.ndarray, max_seconds: float) -> int:
    """Write ``piece`` after the ``done`` samples of ``mono``; past its end, the audio is too long."""
    end = done + piece.size
    if end > mono.size:
        raise PayloadTooLargeError(
            f"audio runs past the limit of {max_seconds:.0f} s (or of {mono.size} samples)"
        )
    mono[done:end] = piece
    return end


def encode_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV bytes."""
    import soundfile as sf

    pcm = samples if samples.dtype == np.int16 else np.clip(samples, -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
