"""Audio runtimes on real trained weights: Whisper tiny.en, Piper, espeak-ng, GE2E, Silero VAD."""

from __future__ import annotations

import json
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from altlas.models.audio_features import mel_filters
from altlas.models.coqui import CoquiRuntime
from altlas.models.errors import InvalidInputError, ModelLoadError
from altlas.models.espeak import EspeakRuntime
from altlas.models.piper import PiperRuntime
from altlas.models.pyannote import PyannoteRuntime
from altlas.models.registry import ModelSpec
from altlas.models.silero_vad import SileroVad, speech_regions
from altlas.models.speaker_embedding import SpeakerEmbeddingRuntime
from altlas.models.speech_synthesis import SpeechInput
from altlas.models.torch_checkpoint import CheckpointError, load_checkpoint
from altlas.models.whisper import TranscribeInput, TranscribeOptions, WhisperRuntime
from tests.fixtures_audio import RATE, VOICE_A, VOICE_B, espeak, silence, synthetic_voice, word_recall

GOLDEN = Path(__file__).parent / "data" / "ge2e_golden.json"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Kafka carries the requests to the model.",
    "Please send me the transcript of the meeting.",
]


def spec(backend: str, path: Path | None, task: str = "audio.transcribe", **params: Any) -> ModelSpec:
    """A registry entry built in code."""
    return ModelSpec(id=backend, version="1", task=task, backend=backend, path=path, params=params)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Any attempt to reach a non-loopback address fails the test (a hub download would)."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not host.startswith(("127.", "::1", "localhost", "/")):
            attempts.append(address)
            raise OSError(f"test forbids network access to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield attempts
    assert not attempts, f"tried to reach {attempts}"


@pytest.fixture(scope="module")
def whisper(whisper_dir: Path) -> WhisperRuntime:
    runtime = WhisperRuntime(spec("faster-whisper", whisper_dir))
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def encoder(ge2e_weights: Path) -> SpeakerEmbeddingRuntime:
    runtime = SpeakerEmbeddingRuntime(spec("ge2e", ge2e_weights, "audio.diarize"))
    runtime.load()
    return runtime


# ---------------------------------------------------------------- front end and weights
def test_mel_filterbank_equals_the_one_whisper_was_trained_with() -> None:
    from faster_whisper.feature_extractor import FeatureExtractor

    ours = mel_filters(16_000, 400, 80)
    theirs = FeatureExtractor.get_mel_filters(16_000, 400, n_mels=80)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-8)


def test_torch_checkpoint_is_read_without_torch(ge2e_weights: Path) -> None:
    state = load_checkpoint(ge2e_weights)["model_state"]
    assert state["lstm.weight_ih_l0"].shape == (1024, 40)
    assert state["lstm.weight_hh_l2"].shape == (1024, 256)
    assert state["linear.weight"].shape == (256, 256)
    assert state["lstm.weight_ih_l0"].dtype == np.float32


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        for part in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(part, fh)
        pickle.dump({"model_state": Exploit()}, fh)
    with pytest.raises(CheckpointError, match=r"builtins\.print"):
        load_checkpoint(path)


def test_numpy_ge2e_reproduces_resemblyzer_on_torch(encoder: SpeakerEmbeddingRuntime) -> None:
    golden = np.array(json.loads(GOLDEN.read_text())["embedding"], dtype=np.float32)
    ours = encoder.embed_utterance(synthetic_voice())
    assert float(ours @ golden) > 0.99999
    np.testing.assert_allclose(ours, golden, atol=2e-5)


def test_numpy_lstm_matches_torch_when_torch_is_installed(
    encoder: SpeakerEmbeddingRuntime, ge2e_weights: Path
) -> None:
    torch = pytest.importorskip("torch")
    state = torch.load(ge2e_weights, map_location="cpu", weights_only=False)["model_state"]
    lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
    linear = torch.nn.Linear(256, 256)
    lstm.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("lstm.")})
    linear.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("linear.")})
    mels = np.abs(np.random.default_rng(0).normal(size=(3, 90, 40))).astype(np.float32)
    with torch.no_grad():
        _, (hidden, _) = lstm(torch.from_numpy(mels))
        raw = torch.relu(linear(hidden[-1]))
        want = (raw / raw.norm(dim=1, keepdim=True)).numpy()
    assert encoder.encoder is not None
    np.testing.assert_allclose(encoder.encoder(mels), want, atol=1e-5)


def test_ge2e_tells_two_espeak_voices_apart(encoder: SpeakerEmbeddingRuntime) -> None:
    a1, a2 = (encoder.embed_utterance(espeak(s, VOICE_A)) for s in SENTENCES[:2])
    b1, b2 = (encoder.embed_utterance(espeak(s, VOICE_B)) for s in SENTENCES[:2])
    same = min(float(a1 @ a2), float(b1 @ b2))
    different = max(float(a1 @ b1), float(a2 @ b2), float(a1 @ b2))
    assert same > 0.8 and different < 0.75 and same - different > 0.1


def test_unreadable_ge2e_weights_fail_to_load(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ModelLoadError):
        SpeakerEmbeddingRuntime(spec("ge2e", bad, "audio.diarize")).load()
    with pytest.raises(ModelLoadError, match="does not exist"):
        SpeakerEmbeddingRuntime(spec("ge2e", tmp_path / "missing.pt", "audio.diarize")).load()


# ---------------------------------------------------------------- VAD
@pytest.mark.parametrize("which", ["silero_vad_onnx", "bundled_vad"])
def test_silero_vad_finds_speech_between_silences(which: str, request: pytest.FixtureRequest) -> None:
    vad = SileroVad(request.getfixturevalue(which))
    speech = espeak(SENTENCES[0], trim=True)
    clip = np.concatenate([silence(1.0), speech, silence(1.0)])
    (probs,) = vad.probabilities([clip])
    regions = speech_regions(probs, clip.size / RATE)
    assert len(regions) >= 1
    assert abs(regions[0].start - 1.0) < 0.15
    assert abs(regions[-1].end - (1.0 + speech.size / RATE)) < 0.25
    assert float(probs[: int(0.8 * RATE) // 512].max()) < 0.5  # leading silence is not speech


def test_streaming_vad_batches_clips_of_different_lengths(silero_vad_onnx: Path) -> None:
    vad = SileroVad(silero_vad_onnx)
    a, b = espeak(SENTENCES[0]), np.concatenate([silence(0.5), espeak(SENTENCES[1])])
    together = vad.probabilities([a, b])
    alone = [vad.probabilities([a])[0], vad.probabilities([b])[0]]
    for x, y in zip(together, alone, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)


# ---------------------------------------------------------------- Whisper
def test_whisper_tiny_en_transcribes_espeak_speech(whisper: WhisperRuntime) -> None:
    (out,) = whisper.predict_batch([TranscribeInput(espeak(SENTENCES[1]), TranscribeOptions(beam_size=5))])
    text = " ".join(s.text for s in out.segments)
    assert word_recall(SENTENCES[1], text) >= 0.85, text
    assert out.language == "en" and out.language_probability == 1.0


def test_a_batch_of_clips_is_one_batched_call_with_each_clip_its_own_transcript(
    whisper: WhisperRuntime,
) -> None:
    options = TranscribeOptions(word_timestamps=True, beam_size=1)
    clips = [espeak(s) for s in SENTENCES]
    outputs = whisper.predict_batch([TranscribeInput(c, options) for c in clips])
    for sentence, clip, out in zip(SENTENCES, clips, outputs, strict=True):
        text = " ".join(s.text for s in out.segments)
        assert word_recall(sentence, text) >= 0.7, text
        assert out.duration_s == pytest.approx(clip.size / RATE)
        starts = [w.start for s in out.segments for w in s.words]
        assert starts == sorted(starts) and starts[0] >= 0 and starts[-1] <= out.duration_s


def test_vad_filter_path_skips_leading_silence(whisper: WhisperRuntime) -> None:
    clip = np.concatenate([silence(3.0), espeak(SENTENCES[0])])
    (out,) = whisper.predict_batch(
        [TranscribeInput(clip, TranscribeOptions(vad_filter=True, word_timestamps=True))]
    )
    assert word_recall(SENTENCES[0], " ".join(s.text for s in out.segments)) >= 0.7
    assert out.segments[0].words[0].start >= 2.5


def test_a_model_dir_without_tokenizer_is_refused_instead_of_downloaded(
    whisper_dir: Path, tmp_path: Path, no_network: list[Any]
) -> None:
    partial = tmp_path / "whisper"
    partial.mkdir()
    for name in ("model.bin", "config.json", "vocabulary.txt"):
        (partial / name).symlink_to(whisper_dir / name)
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        WhisperRuntime(spec("faster-whisper", partial)).load()


def test_whisper_loads_and_runs_with_no_network_at_all(whisper_dir: Path, no_network: list[Any]) -> None:
    runtime = WhisperRuntime(spec("faster-whisper", whisper_dir))
    runtime.load()
    (out,) = runtime.predict_batch([TranscribeInput(espeak("Hello world."), TranscribeOptions())])
    assert "hello" in " ".join(s.text for s in out.segments).lower()


# ---------------------------------------------------------------- TTS
def test_espeak_speaks_and_speed_shortens_the_speech() -> None:
    runtime = EspeakRuntime(spec("espeak-ng", None, "audio.tts"))
    runtime.load()
    normal, fast, bad = runtime.predict_batch(
        [
            SpeechInput("The orchestrator speaks."),
            SpeechInput("The orchestrator speaks.", speed=2.0),
            SpeechInput("x", voice="zz-nonexistent"),
        ]
    )
    assert not isinstance(normal, Exception) and not isinstance(fast, Exception)
    assert normal.sample_rate == 22_050 and normal.samples.dtype == np.int16
    assert 0.4 < fast.duration_s / normal.duration_s < 0.7
    assert np.abs(normal.samples).max() > 3000
    assert isinstance(bad, InvalidInputError)
    assert "en-us" in runtime.voices()


def test_espeak_never_reads_text_as_options() -> None:
    runtime = EspeakRuntime(spec("espeak-ng", None, "audio.tts"))
    runtime.load()
    (out,) = runtime.predict_batch([SpeechInput("--version -w /tmp/owned.wav")])
    assert not isinstance(out, Exception) and out.duration_s > 1.0
    assert not Path("/tmp/owned.wav").exists()


def test_piper_voice_is_understood_by_whisper(piper_voice: Path, whisper: WhisperRuntime) -> None:
    # No sampling noise: the same speech every run (with it, one suite run's Whisper heard "a work
    # of straighter" for "orchestrator").
    runtime = PiperRuntime(spec("piper", piper_voice, "audio.tts", noise_scale=0.0, noise_w=0.0))
    runtime.load()
    (speech,) = runtime.predict_batch([SpeechInput("The orchestrator speaks.")])
    assert not isinstance(speech, Exception)
    assert speech.sample_rate == 22_050 and 0.8 < speech.duration_s < 4.0
    import soxr

    audio = soxr.resample(speech.samples.astype(np.float32) / 32768, speech.sample_rate, RATE).astype(
        np.float32
    )
    (heard,) = whisper.predict_batch([TranscribeInput(audio, TranscribeOptions())])
    assert word_recall("The orchestrator speaks.", " ".join(s.text for s in heard.segments)) == 1.0
    (single,) = runtime.predict_batch([SpeechInput("Hi.", voice="3")])
    assert isinstance(single, InvalidInputError)  # joe is a single-speaker voice


def test_coqui_backend_refuses_missing_files_and_names_its_package(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        CoquiRuntime(spec("coqui", tmp_path / "model.pth", "audio.tts")).load()
    (tmp_path / "model.pth").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="config"):
        CoquiRuntime(spec("coqui", tmp_path / "model.pth", "audio.tts")).load()
    (tmp_path / "config.json").write_text("{}")
    try:
        import TTS  # noqa: F401
    except ImportError:
        with pytest.raises(ModelLoadError, match="coqui-tts"):
            CoquiRuntime(spec("coqui", tmp_path / "model.pth", "audio.tts")).load()
    else:  # installed: a bogus checkpoint must still be a clean load error
        with pytest.raises(ModelLoadError):
            CoquiRuntime(spec("coqui", tmp_path / "model.pth", "audio.tts")).load()


def test_pyannote_backend_needs_a_local_pipeline_dir_and_never_the_hub(
    tmp_path: Path, no_network: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelLoadError, match=r"config\.yaml"):
        PyannoteRuntime(spec("pyannote", tmp_path, "audio.diarize")).load()
    (tmp_path / "config.yaml").write_text("pipeline: {name: pyannote.audio.pipelines.SpeakerDiarization}\n")
    with pytest.raises(ModelLoadError):
        PyannoteRuntime(spec("pyannote", tmp_path, "audio.diarize")).load()
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"


# ---------------------------------------------------------------- multilingual paths (random weights)
@pytest.fixture(scope="module")
def multilingual(tmp_path_factory: pytest.TempPathFactory) -> WhisperRuntime:
    from tests.whisper_builder import build_random_multilingual_whisper

    directory = build_random_multilingual_whisper(tmp_path_factory.mktemp("whisper-ml") / "model")
    runtime = WhisperRuntime(spec("faster-whisper", directory))
    runtime.load()
    return runtime


def test_a_multilingual_model_detects_the_language_when_none_is_given(multilingual: WhisperRuntime) -> None:
    from tests.whisper_builder import LANGUAGES

    assert multilingual.multilingual
    auto = TranscribeInput(espeak("Hello world."), TranscribeOptions())
    assert not multilingual._batchable(auto)  # detection runs clip by clip
    (out,) = multilingual.predict_batch([auto])
    assert out.language in LANGUAGES and 0.0 < out.language_probability <= 1.0


def test_a_given_language_and_translate_reach_a_multilingual_model_batched(
    multilingual: WhisperRuntime,
) -> None:
    options = TranscribeOptions(language="de", task="translate", word_timestamps=True)
    items = [TranscribeInput(espeak(s), options) for s in SENTENCES[:2]]
    assert all(multilingual._batchable(i) for i in items)
    outputs = multilingual.predict_batch(items)
    assert [o.language for o in outputs] == ["de", "de"]
    assert all(o.language_probability == 1.0 for o in outputs)
    assert [o.duration_s for o in outputs] == [pytest.approx(i.audio.size / RATE) for i in items]


def test_an_english_only_model_answers_en_whatever_language_is_asked(whisper: WhisperRuntime) -> None:
    (out,) = whisper.predict_batch([TranscribeInput(espeak(SENTENCES[1]), TranscribeOptions(language="fr"))])
    assert out.language == "en"
    assert word_recall(SENTENCES[1], " ".join(s.text for s in out.segments)) >= 0.85
