"""Spectral front ends in numpy: STFT, Slaney mel filterbank, (log-)mel spectrograms.

Audio models are trained on one exact front end and degrade silently on
another, so this reproduces librosa's defaults (periodic Hann window, centred
frames, Slaney-normalised mel filters) without librosa and its numba stack;
a test checks the filterbank against the one faster-whisper ships.
"""

from __future__ import annotations

import numpy as np


def hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's htk=False)."""
    freqs = np.asarray(freqs, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = freqs / f_sp
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    log_region = freqs >= min_log_hz
    mels = np.where(log_region, min_log_mel + np.log(np.maximum(freqs, 1e-10) / min_log_hz) / logstep, mels)
    return np.asarray(mels)


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.asarray(
        np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)
    )


def mel_filters(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, Slaney area normalisation."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(fmin)), hz_to_mel(np.array(fmax)), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return np.asarray(weights, dtype=np.float32)


def power_spectrogram(
    audio: np.ndarray, n_fft: int, hop_length: int, *, center: bool = True, pad_mode: str = "reflect"
) -> np.ndarray:
    """|STFT|^2 with a periodic Hann window, shape (frames, n_fft // 2 + 1)."""
    x = np.asarray(audio, dtype=np.float32)
    if center:
        pad = n_fft // 2
        mode = pad_mode if x.size > pad else "constant"  # reflect needs more samples than the pad
        x = np.pad(x, pad, mode=mode)  # type: ignore[call-overload]
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = 1 + (x.size - n_fft) // hop_length
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    strided = np.lib.stride_tricks.as_strided(
        x, shape=(frames, n_fft), strides=(x.strides[0] * hop_length, x.strides[0])
    )
    spectrum = np.fft.rfft(strided * window, axis=1)
    return (spectrum.real**2 + spectrum.imag**2).astype(np.float32)


def mel_spectrogram(
    audio: np.ndarray,
    sample_rate: int,
    *,
    n_fft: int = 400,
    hop_length: int = 160,
    n_mels: int = 40,
    fmin: float = 0.0,
    fmax: float | None = None,
    filters: np.ndarray | None = None,
) -> np.ndarray:
    """Mel power spectrogram, shape (frames, n_mels) (librosa.feature.melspectrogram, transposed)."""
    weights = filters if filters is not None else mel_filters(sample_rate, n_fft, n_mels, fmin, fmax)
    return np.asarray(power_spectrogram(audio, n_fft, hop_length) @ weights.T, dtype=np.float32)


def log_mel_spectrogram(
    audio: np.ndarray, sample_rate: int, *, log_offset: float = 1e-6, **kwargs: object
) -> np.ndarray:
    """Natural log of the mel power spectrogram plus a floor, shape (frames, n_mels)."""
    mel = mel_spectrogram(audio, sample_rate, **kwargs)  # type: ignore[arg-type]
    return np.log(mel + np.float32(log_offset)).astype(np.float32)
