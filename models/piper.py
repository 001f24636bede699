"""Piper backend: neural (VITS) text-to-speech on ONNX Runtime, offline.

The registry path is the voice's ``.onnx`` file; its ``.onnx.json`` config
(phoneme map, sample rate, speakers) sits next to it. Piper phonemizes with an
espeak-ng it bundles; that library keeps global state, so synthesis is
serialised with a lock while the ONNX session itself stays shared. Params:
``length_scale`` (default from the voice), ``noise_scale``, ``noise_w``,
``speaker`` (default speaker id of multi-speaker voices), ``device``.
``voice`` in a request names a speaker of a multi-speaker voice (id or name).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from altlas.models.errors import InvalidInputError, ModelLoadError
from altlas.models.registry import ModelSpec
from altlas.models.speech_synthesis import SpeechInput, SynthesizedSpeech, to_int16


class PiperRuntime:
    """Backend ``piper``."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.voice: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Open the voice model and its JSON config (no download: both are the user's files)."""
        path = self.spec.path
        if path is None or not path.is_file():
            raise ModelLoadError(f"{self.spec.key}: piper voice {path} does not exist")
        config = Path(str(self.spec.params.get("config", f"{path}.json")))
        if not config.is_file():
            raise ModelLoadError(f"{self.spec.key}: piper voice config {config} does not exist")
        from piper import PiperVoice

        device = str(self.spec.params.get("device", "cpu"))
        try:
            self.voice = PiperVoice.load(path, config_path=config, use_cuda=device == "cuda")
        except Exception as exc:  # onnxruntime / JSON errors, untyped
            raise ModelLoadError(f"{self.spec.key}: cannot load {path}: {exc}") from exc

    @property
    def sample_rate(self) -> int:
        """The voice's output rate (22,050 Hz for medium voices)."""
        return int(self.voice.config.sample_rate) if self.voice is not None else 0

    def predict_batch(self, inputs: Sequence[SpeechInput]) -> list[SynthesizedSpeech | Exception]:
        """Speak each text (Piper synthesises one sentence per ONNX call)."""
        if self.voice is None:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        out: list[SynthesizedSpeech | Exception] = []
        for item in inputs:
            try:
                out.append(self._speak(item))
            except InvalidInputError as exc:
                out.append(exc)
        return out

    def _speak(self, item: SpeechInput) -> SynthesizedSpeech:
        from piper import SynthesisConfig

        params = self.spec.params
        base = float(params.get("length_scale", self.voice.config.length_scale))
        config = SynthesisConfig(
            speaker_id=self._speaker(item.voice),
            length_scale=base / item.speed,
            noise_scale=params.get("noise_scale"),
            noise_w_scale=params.get("noise_w"),
        )
        with self._lock:
            chunks = [c.audio_float_array for c in self.voice.synthesize(item.text, syn_config=config)]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return SynthesizedSpeech(to_int16(samples), self.sample_rate)

    def _speaker(self, voice: str | None) -> int | None:
        speakers: dict[str, int] = dict(self.voice.config.speaker_id_map or {})
        default = self.spec.params.get("speaker")
        if voice is None:
            return int(default) if default is not None else (0 if speakers else None)
        if not speakers:
            raise InvalidInputError(f"{self.spec.key} has a single voice; voice {voice!r} cannot be chosen")
        if voice in speakers:
            return speakers[voice]
        if voice.isdigit() and int(voice) < int(self.voice.config.num_speakers):
            return int(voice)
        raise InvalidInputError(f"{self.spec.key} has no speaker {voice!r}")

    def unload(self) -> None:
        """Drop the ONNX session."""
        self.voice = None

    def memory_bytes(self) -> int:
        """Size of the voice model (60 MB for a medium voice)."""
        return self.spec.path.stat().st_size if self.spec.path and self.spec.path.exists() else 0
