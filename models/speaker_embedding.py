"""Speaker embeddings from a GE2E encoder (Resemblyzer's), run in numpy; plus the VAD diarization needs.

The encoder is a 3-layer LSTM over 40-band mel power frames (25 ms window,
10 ms hop, 16 kHz) whose last hidden state goes through a linear layer, a ReLU
and L2 normalisation: a (256,) unit vector per stretch of speech. Resemblyzer
runs it in torch; the same arithmetic in numpy keeps torch (3 GB) out of the
serving path, and a test checks the two agree. Weights are a user's ``.pt``
state dict (Resemblyzer's ``pretrained.pt`` or any checkpoint of the same
shape), read without torch by :mod:`altlas.models.torch_checkpoint`.

Registry params: ``vad_model`` (path to a Silero VAD ONNX file; default: the
one faster-whisper ships), ``normalize_dbfs`` (input gain target, -30).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from altlas.models.audio_features import mel_filters, mel_spectrogram
from altlas.models.errors import ModelLoadError
from altlas.models.registry import ModelSpec
from altlas.models.silero_vad import SileroVad, SpeechRegion, bundled_vad_path, speech_regions
from altlas.models.torch_checkpoint import CheckpointError, load_checkpoint

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
FRAMES_PER_SECOND = SAMPLE_RATE // HOP


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)))  # overflow-free form


class Ge2eEncoder:
    """The network's forward pass over a batch of equal-length mel windows."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        i = 0
        while f"lstm.weight_ih_l{i}" in state:
            w_ih = state[f"lstm.weight_ih_l{i}"].astype(np.float32)
            w_hh = state[f"lstm.weight_hh_l{i}"].astype(np.float32)
            bias = (state[f"lstm.bias_ih_l{i}"] + state[f"lstm.bias_hh_l{i}"]).astype(np.float32)
            self.layers.append((np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), bias))
            i += 1
        if not self.layers or "linear.weight" not in state:
            raise ModelLoadError("checkpoint lacks lstm.weight_ih_l0 / linear.weight: not a GE2E encoder")
        self.linear_w = np.ascontiguousarray(state["linear.weight"].astype(np.float32).T)
        self.linear_b = state["linear.bias"].astype(np.float32)
        self.n_mels = self.layers[0][0].shape[0]
        self.hidden = self.layers[0][1].shape[0]
        self.dim = self.linear_w.shape[1]
        self.nbytes = sum(a.nbytes for layer in self.layers for a in layer) + self.linear_w.nbytes

    def __call__(self, mels: np.ndarray) -> np.ndarray:
        """(batch, frames, n_mels) -> (batch, dim) unit vectors."""
        x = np.asarray(mels, dtype=np.float32)
        batch, steps, _ = x.shape
        h = np.zeros((batch, self.hidden), dtype=np.float32)
        for w_ih, w_hh, bias in self.layers:
            gates_in = x @ w_ih + bias  # every time step's input projection at once
            h = np.zeros((batch, self.hidden), dtype=np.float32)
            c = np.zeros((batch, self.hidden), dtype=np.float32)
            outputs = np.empty((batch, steps, self.hidden), dtype=np.float32)
            n = self.hidden
            for t in range(steps):
                g = gates_in[:, t] + h @ w_hh
                i_g, f_g, o_g = _sigmoid(g[:, :n]), _sigmoid(g[:, n : 2 * n]), _sigmoid(g[:, 3 * n :])
                c = f_g * c + i_g * np.tanh(g[:, 2 * n : 3 * n])
                h = o_g * np.tanh(c)
                outputs[:, t] = h
            x = outputs
        raw = np.maximum(h @ self.linear_w + self.linear_b, 0.0)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        return np.asarray(raw / np.maximum(norms, 1e-12), dtype=np.float32)


def normalize_volume(audio: np.ndarray, target_dbfs: float) -> np.ndarray:
    """Raise quiet audio to ``target_dbfs`` (never lower it), as the encoder was trained."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    if rms <= 0:
        return audio
    change = target_dbfs - 20 * np.log10(rms)
    return audio if change < 0 else (audio * np.float32(10 ** (change / 20))).astype(np.float32)


class SpeakerEmbeddingRuntime:
    """Backend ``ge2e``: an utterance embedding per clip; windows and speech regions for diarization."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.encoder: Ge2eEncoder | None = None
        self.vad: SileroVad | None = None
        self.filters = mel_filters(SAMPLE_RATE, N_FFT, N_MELS)
        self.target_dbfs = float(spec.params.get("normalize_dbfs", -30.0))

    def load(self) -> None:
        """Read the checkpoint (no torch) and open the VAD."""
        if self.spec.path is None or not self.spec.path.is_file():
            raise ModelLoadError(f"{self.spec.key}: GE2E weights file {self.spec.path} does not exist")
        try:
            checkpoint: Any = load_checkpoint(self.spec.path)
        except (CheckpointError, OSError) as exc:
            raise ModelLoadError(f"{self.spec.key}: {exc}") from exc
        state = checkpoint.get("model_state", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise ModelLoadError(f"{self.spec.key}: {self.spec.path} holds no state dict")
        self.encoder = Ge2eEncoder(state)
        if self.encoder.n_mels != N_MELS:
            raise ModelLoadError(
                f"{self.spec.key}: encoder takes {self.encoder.n_mels} mel bands, not {N_MELS}"
            )
        self.vad = SileroVad(self._vad_path())

    def _vad_path(self) -> Path:
        configured = self.spec.params.get("vad_model")
        if configured:
            path = Path(str(configured)).expanduser()
            if not path.is_absolute() and self.spec.path is not None:
                path = self.spec.path.parent / path
        else:
            found = bundled_vad_path()
            if found is None:
                raise ModelLoadError(
                    f"{self.spec.key}: set params.vad_model (faster-whisper's VAD is absent)"
                )
            path = found
        if not path.is_file():
            raise ModelLoadError(f"{self.spec.key}: VAD model {path} does not exist")
        return path

    # ------------------------------------------------------------ diarization helpers
    def mel(self, audio: np.ndarray) -> np.ndarray:
        """(frames, 40) mel power frames at 100 per second."""
        return mel_spectrogram(audio, SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, filters=self.filters)

    def prepare(self, audio: np.ndarray) -> np.ndarray:
        """Gain normalisation the encoder expects (16 kHz float32 in, same out)."""
        return normalize_volume(np.asarray(audio, dtype=np.float32), self.target_dbfs)

    def speech(self, audio: np.ndarray, **options: float) -> list[SpeechRegion]:
        """Where someone speaks in a 16 kHz clip."""
        if self.vad is None:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        (probs,) = self.vad.probabilities([audio])
        return speech_regions(probs, audio.size / SAMPLE_RATE, **options)

    def embed_windows(
        self, mel: np.ndarray, windows: Sequence[tuple[int, int]], batch: int = 64
    ) -> np.ndarray:
        """One embedding per (start_frame, end_frame) window of a mel spectrogram."""
        if self.encoder is None:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        out = np.zeros((len(windows), self.encoder.dim), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, (start, end) in enumerate(windows):
            by_length.setdefault(end - start, []).append(i)
        for length, indices in by_length.items():
            for k in range(0, len(indices), batch):
                chunk = indices[k : k + batch]
                stack = np.zeros((len(chunk), length, mel.shape[1]), dtype=np.float32)
                for row, i in enumerate(chunk):
                    piece = mel[windows[i][0] : windows[i][1]]
                    stack[row, : piece.shape[0]] = piece
                out[chunk] = self.encoder(stack)
        return out

    def embed_utterance(self, audio: np.ndarray, window_s: float = 1.6, rate: float = 1.3) -> np.ndarray:
        """Resemblyzer's utterance embedding: mean of 1.6 s partial windows, renormalised."""
        mel = self.mel(self.prepare(audio))
        length = int(window_s * FRAMES_PER_SECOND)
        step = max(1, round(FRAMES_PER_SECOND / rate))
        total = mel.shape[0]
        starts = list(range(0, max(1, total - length + step), step))
        if len(starts) > 1 and (total - starts[-1]) / length < 0.75:
            starts = starts[:-1]  # a last window mostly made of padding is left out
        partials = self.embed_windows(mel, [(s, s + length) for s in starts])
        mean = partials.mean(axis=0)
        return np.asarray(mean / max(float(np.linalg.norm(mean)), 1e-12), dtype=np.float32)

    # ------------------------------------------------------------ protocol
    def predict_batch(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Utterance embedding of each 16 kHz clip."""
        return [self.embed_utterance(audio) for audio in inputs]

    def unload(self) -> None:
        """Drop the weights and the VAD session."""
        self.encoder = None
        self.vad = None

    def memory_bytes(self) -> int:
        """Weights held (about 6 MB) plus the VAD file."""
        weights = self.encoder.nbytes if self.encoder else 0
        vad = self.vad.path.stat().st_size if self.vad else 0
        return weights + vad
