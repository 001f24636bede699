"""Coqui TTS backend, for users who have Coqui models on disk (VITS, Tacotron2, XTTS...).

Coqui's ``TTS`` package pulls torch and its models cannot be fetched here, so
it is not part of the ``audio`` extra: install ``coqui-tts`` yourself. The
registry path is the model checkpoint (``model.pth``) and ``params.config``
its ``config.json`` (default: next to it); the package's model manager (the
part that downloads) is never used. Params: ``device``, ``speaker`` (default
speaker of multi-speaker models), ``language`` (multilingual models).
Unverified here: no Coqui weights can be had on this network.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from altlas.models.errors import InferenceError, ModelLoadError
from altlas.models.registry import ModelSpec
from altlas.models.speech_synthesis import SpeechInput, SynthesizedSpeech, to_int16


class CoquiRuntime:
    """Backend ``coqui``."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.tts: Any = None
        self._lock = threading.Lock()  # Coqui's synthesizer is not documented as thread-safe

    def load(self) -> None:
        """Open a local checkpoint + config; refuses before importing torch when files are missing."""
        path = self.spec.path
        if path is None or not path.exists():
            raise ModelLoadError(f"{self.spec.key}: Coqui model {path} does not exist")
        config = Path(str(self.spec.params.get("config", path.parent / "config.json")))
        if not config.is_file():
            raise ModelLoadError(f"{self.spec.key}: Coqui config {config} does not exist")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            api = importlib.import_module("TTS.api")
        except ImportError as exc:
            raise ModelLoadError(
                f"{self.spec.key}: the coqui backend needs Coqui TTS (pip install coqui-tts): {exc}"
            ) from exc
        device = str(self.spec.params.get("device", "cpu"))
        try:
            self.tts = api.TTS(model_path=str(path), config_path=str(config), progress_bar=False).to(device)
        except Exception as exc:  # Coqui raises whatever its model classes raise
            raise ModelLoadError(f"{self.spec.key}: cannot load {path}: {exc}") from exc

    def predict_batch(self, inputs: Sequence[SpeechInput]) -> list[SynthesizedSpeech | Exception]:
        """Speak each text."""
        if self.tts is None:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        rate = int(self.tts.synthesizer.output_sample_rate)
        out: list[SynthesizedSpeech | Exception] = []
        for item in inputs:
            kwargs: dict[str, Any] = {"text": item.text}
            speaker = item.voice or self.spec.params.get("speaker")
            if speaker:
                kwargs["speaker"] = speaker
            if self.spec.params.get("language"):
                kwargs["language"] = self.spec.params["language"]
            if item.speed != 1.0:
                kwargs["speed"] = item.speed
            try:
                with self._lock:
                    wav = self.tts.tts(**kwargs)
            except Exception as exc:  # a bad speaker name or text fails this item only
                out.append(InferenceError(f"coqui: {exc}"))
                continue
            out.append(SynthesizedSpeech(to_int16(np.asarray(wav, dtype=np.float32)), rate))
        return out

    def unload(self) -> None:
        """Drop the model."""
        self.tts = None

    def memory_bytes(self) -> int:
        """Checkpoint size on disk."""
        path = self.spec.path
        return path.stat().st_size if path is not None and path.is_file() else 0
