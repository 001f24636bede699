"""What every text-to-speech backend takes and returns, so one pipeline serves them all."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpeechInput:
    """Text to speak; ``voice`` None means the model's default, ``speed`` 1.0 its natural rate."""

    text: str
    voice: str | None = None
    speed: float = 1.0


@dataclass(frozen=True)
class SynthesizedSpeech:
    """Mono 16-bit samples and their rate."""

    samples: np.ndarray  # int16
    sample_rate: int

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.samples.size / self.sample_rate


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] (or already int16) as int16."""
    if samples.dtype == np.int16:
        return samples
    return np.asarray(np.clip(samples, -1.0, 1.0) * 32767.0, dtype=np.int16)
