"""espeak-ng backend: formant speech synthesis, offline, many languages; the default voice.

espeak-ng runs as a subprocess per utterance (its library keeps global state,
so one process per call is also what makes concurrent lanes safe). Text goes
in on stdin, never on the command line, so it cannot be read as an option.
The registry path is unused; params: ``voice`` (default ``en-us``),
``words_per_minute`` at speed 1.0 (175), ``pitch`` (0-99), ``timeout_s``.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections.abc import Sequence

import numpy as np

from altlas.models.errors import InferenceError, InvalidInputError, ModelLoadError
from altlas.models.registry import ModelSpec
from altlas.models.speech_synthesis import SpeechInput, SynthesizedSpeech

_VOICE = re.compile(r"^[A-Za-z0-9_\-+]{1,64}$")


class EspeakRuntime:
    """Backend ``espeak-ng``."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.binary: str | None = None
        params = spec.params
        self.default_voice = str(params.get("voice", "en-us"))
        self.wpm = int(params.get("words_per_minute", 175))
        self.pitch = params.get("pitch")
        self.timeout_s = float(params.get("timeout_s", 60))

    def load(self) -> None:
        """Find the espeak-ng binary and check it speaks the default voice."""
        self.binary = shutil.which(str(self.spec.params.get("binary", "espeak-ng")))
        if self.binary is None:
            raise ModelLoadError(f"{self.spec.key}: espeak-ng is not installed (apt-get install espeak-ng)")
        self._run("test", self.default_voice, 1.0)

    def predict_batch(self, inputs: Sequence[SpeechInput]) -> list[SynthesizedSpeech | Exception]:
        """Speak each text; a bad voice fails only its own item."""
        out: list[SynthesizedSpeech | Exception] = []
        for item in inputs:
            try:
                out.append(self._run(item.text, item.voice or self.default_voice, item.speed))
            except (InvalidInputError, InferenceError) as exc:
                out.append(exc)
        return out

    def _run(self, text: str, voice: str, speed: float) -> SynthesizedSpeech:
        if self.binary is None:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        if not _VOICE.match(voice):
            raise InvalidInputError(f"voice {voice!r} is not an espeak-ng voice name")
        cmd = [self.binary, "--stdout", "-v", voice, "-s", str(max(80, min(500, round(self.wpm * speed))))]
        if self.pitch is not None:
            cmd += ["-p", str(int(self.pitch))]
        try:
            proc = subprocess.run(
                cmd, input=text.encode(), capture_output=True, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise InferenceError(f"espeak-ng took longer than {self.timeout_s} s") from exc
        stderr = proc.stderr.decode(errors="replace").strip()
        if "voice does not exist" in stderr:
            raise InvalidInputError(f"unknown espeak-ng voice {voice!r}")
        if proc.returncode != 0 or not proc.stdout:
            raise InferenceError(f"espeak-ng failed ({proc.returncode}): {stderr[-500:]}")
        return _parse_stream_wav(proc.stdout)

    def voices(self) -> list[str]:
        """Voice names this espeak-ng knows (for documentation and tests)."""
        if self.binary is None:
            return []
        listing = subprocess.run([self.binary, "--voices"], capture_output=True, check=False, timeout=30)
        return [line.split()[1] for line in listing.stdout.decode().splitlines()[1:] if len(line.split()) > 1]

    def unload(self) -> None:
        """Nothing is resident between calls."""
        self.binary = None

    def memory_bytes(self) -> int:
        """A subprocess per call; nothing held."""
        return 0


def _parse_stream_wav(data: bytes) -> SynthesizedSpeech:
    """espeak-ng's streamed WAV: its header claims a placeholder length, so read up to the end."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InferenceError("espeak-ng did not write a WAV stream")
    pos, rate, bits = 12, 0, 16
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if kind == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[pos + 8 : pos + 24])
            if channels != 1 or bits != 16:
                raise InferenceError(f"espeak-ng wrote {channels} channels of {bits} bits")
        elif kind == b"data":
            body = data[pos + 8 :]
            body = body[: len(body) - len(body) % 2]
            return SynthesizedSpeech(np.frombuffer(body, dtype="<i2").astype(np.int16), rate)
        pos += 8 + size
    raise InferenceError("espeak-ng's WAV stream has no data chunk")
