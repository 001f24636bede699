"""The starter registry and `altlas send` for people, through the CLI and the real broker.

`altlas run` with no registry serves trained models from packages; `altlas send`
sniffs a PNG, a WAV or a sentence and prints the answer, sends whole folders,
prints raw JSON and saves speech. Every answer here comes from a trained model.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from altlas.models.registry import ModelRegistry
from altlas.models.runtime import create_runtime
from altlas.orchestration.app import starter
from altlas.orchestration.app.settings import Settings, cache_dir
from altlas.orchestration.execution.sniff import sniff
from altlas.pipelines import PipelineLimits, load_pipelines
from tests.conftest import isolated_settings, serving, write_config
from tests.fixtures_audio import espeak, wav_bytes, word_recall
from tests.images import rotated_page

SPOKEN = "the orchestrator reads every request from the stream"
TASKS = {
    "vision.classify",
    "vision.detect",
    "vision.segment",
    "vision.ocr",
    "text.generate",
    "text.chat",
    "text.embed",
    "audio.transcribe",
    "audio.tts",
    "text.tts",
    "audio.classify",
    "audio.diarize",
}


def _altlas(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "altlas.orchestration", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture(scope="module")
def starter_registry() -> Path:
    """The starter registry file, its models fetched into the cache once."""
    return starter.registry_file(announce=False)


@pytest.fixture
def starter_settings(kafka_bootstrap: str, starter_registry: Path) -> Settings:
    return isolated_settings(kafka_bootstrap, starter_registry)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory, astronaut_png: bytes) -> Path:
    """A page, a photo, speech and a prompt, as files a person would send."""
    folder = tmp_path_factory.mktemp("send")
    (folder / "page.png").write_bytes(rotated_page(0))
    (folder / "photo.png").write_bytes(astronaut_png)
    (folder / "speech.wav").write_bytes(wav_bytes(espeak(SPOKEN)))
    (folder / "prompt.txt").write_text("The capital of France is")
    return folder


# ------------------------------------------------------------------ the registry
def test_the_starter_registry_serves_every_task_with_a_trained_model_and_measured_figures(
    starter_registry: Path,
) -> None:
    _, left_out = starter.usable()
    assert left_out == {}, left_out  # `make setup` installs every extra the starter models need
    registry = ModelRegistry.from_file(starter_registry)
    assert {spec.id for spec in registry} == {m.id for m in starter.STARTER}
    assert set(registry.defaults) == TASKS == {t for spec in registry for t in spec.tasks}
    for spec in registry:
        assert spec.path is None or spec.path.exists(), spec
        if spec.path is not None and spec.id != "face":  # OpenCV's cascade comes with opencv itself
            assert spec.path.is_relative_to(cache_dir()), spec.path
        figures = starter.measured()[spec.id]
        assert 0 < figures["accuracy"] <= 1 and figures["cost"] > 0 and figures["latency_ms"] > 0, spec.id
        assert (spec.metadata.accuracy, spec.metadata.cost) == (figures["accuracy"], figures["cost"])


def test_a_missing_backend_leaves_its_model_out_and_says_which_extra_brings_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None if name == "espeak-ng" else "/bin/true")
    real = starter.importlib.util.find_spec
    monkeypatch.setattr(
        starter.importlib.util, "find_spec", lambda name: None if name == "llama_cpp" else real(name)
    )
    models, left_out = starter.usable()
    assert set(left_out) == {"smollm2", "espeak"}
    assert "altlas[llm]" in left_out["smollm2"] and "espeak-ng" in left_out["espeak"]
    doc = starter.document(models, {m.id: None for m in models})
    assert "text.generate" not in doc["defaults"] and doc["defaults"]["audio.tts"] == "joe"


def test_models_list_starter_shows_every_model_its_figures_and_whether_it_serves_here() -> None:
    done = _altlas("models", "list", "--starter")
    assert done.returncode == 0, done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines() if line.count("│") > 3}
    assert set(rows) >= {m.id for m in starter.STARTER}
    for model in starter.STARTER:
        assert "yes" in rows[model.id] and f"{starter.measured()[model.id]['latency_ms']:g}" in rows[model.id]


def test_export_starter_writes_an_editable_registry_that_serves_from_its_own_folder(tmp_path: Path) -> None:
    done = _altlas("models", "export-starter", str(tmp_path / "mine"), "--link")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "mine" / "registry.yaml").read_text()
    assert "altlas run --registry" in text and "# page orientation" in text  # a file to read and edit
    doc = yaml.safe_load(text)
    assert all(not Path(e["path"]).is_absolute() for e in doc["models"] if "path" in e)
    for entry in doc["models"]:
        if "path" in entry:
            assert (tmp_path / "mine" / entry["path"]).exists() and entry["path"].startswith(
                f"{entry['id']}/"
            )
    registry = ModelRegistry.from_file(tmp_path / "mine" / "registry.yaml")
    assert (tmp_path / "mine" / "joe" / "en_US-joe-medium.onnx.json").exists()  # the voice's config too
    assert (tmp_path / "mine" / "minilm" / "tokenizer.json").exists()
    spec = registry.get("orientation")  # and a model runs from there
    runtime = create_runtime(spec)
    runtime.load()
    pipeline = load_pipelines(PipelineLimits())[0]["vision.classify"]
    (out,) = pipeline.run(runtime, [pipeline.prepare(rotated_page(90), {}, spec)])
    assert out.labels[0].label == "90"  # type: ignore[union-attr]


def test_export_starter_copies_a_model_with_the_files_beside_it(tmp_path: Path) -> None:
    voice = starter.by_id("joe")
    source = starter.fetch([voice])["joe"]
    assert source is not None
    relative = starter._place(voice, source, tmp_path / "joe", link=False)
    assert relative == Path("joe/en_US-joe-medium.onnx")
    copied = tmp_path / relative
    assert not copied.is_symlink() and copied.read_bytes() == source.read_bytes()
    assert (tmp_path / "joe" / "en_US-joe-medium.onnx.json").read_bytes() == Path(
        f"{source}.json"
    ).read_bytes()


def test_the_starter_llm_is_greedy_and_short_unless_a_request_asks_otherwise(starter_registry: Path) -> None:
    pytest.importorskip("llama_cpp")
    spec = ModelRegistry.from_file(starter_registry).get("smollm2")
    pipelines = load_pipelines(PipelineLimits())[0]
    for task in ("text.generate", "text.chat"):
        prompt = "Hi" if task == "text.generate" else '[{"role": "user", "content": "Hi"}]'
        plain = pipelines[task].prepare(prompt, {}, spec).data.sampling
        assert (plain.temperature, plain.max_tokens) == (0.0, 32)
        asked = pipelines[task].prepare(prompt, {"temperature": 0.7, "max_tokens": 200}, spec).data.sampling
        assert (asked.temperature, asked.max_tokens) == (0.7, 200)


# ------------------------------------------------------------------ altlas send, for people
async def test_send_sniffs_a_page_a_photo_speech_and_a_sentence_and_prints_answers(
    starter_settings: Settings, samples: Path, tmp_path: Path
) -> None:
    config = str(write_config(starter_settings, tmp_path / "altlas.yaml"))
    async with serving(starter_settings):
        page = await asyncio.to_thread(_altlas, "send", "-c", config, str(samples / "page.png"))
        photo = await asyncio.to_thread(_altlas, "send", "-c", config, str(samples / "photo.png"), "--json")
        speech = await asyncio.to_thread(_altlas, "send", "-c", config, str(samples / "speech.wav"), "--json")
        sentence = await asyncio.to_thread(
            _altlas, "send", "-c", config, "The capital of France is", "--json"
        )
    assert page.returncode == 0, page.stderr
    assert (
        "ocr" in page.stdout and "tesseract@1" in page.stdout and "Kafka carries each request" in page.stdout
    )
    assert "text page" in page.stderr  # why it picked OCR
    found = json.loads(photo.stdout)
    assert found["task"] == "detect" and found["model_id"] == "face" and found["source"] == "photo.png"
    (box,) = found["output"]["boxes"]
    assert box["class_name"] == "face" and 150 < box["x1"] < 200 and 40 < box["y1"] < 90
    heard = json.loads(speech.stdout)
    assert heard["task"] == "transcribe" and heard["model_id"] == "whisper-tiny-en"
    assert word_recall(SPOKEN, heard["output"]["text"]) >= 0.7, heard["output"]["text"]
    answer = json.loads(sentence.stdout)
    assert answer["task"] == "generate" and answer["model_id"] == "smollm2"
    assert "Paris" in answer["output"]["text"]  # greedy by the starter registry's request defaults


async def test_send_a_folder_prints_one_table_and_json_lines(
    starter_settings: Settings, samples: Path, tmp_path: Path
) -> None:
    config = str(write_config(starter_settings, tmp_path / "altlas.yaml"))
    async with serving(starter_settings):
        table = await asyncio.to_thread(_altlas, "send", "-c", config, str(samples))
        lines = await asyncio.to_thread(_altlas, "send", "-c", config, str(samples), "--json")
    assert table.returncode == 0, table.stderr
    rows = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if line.count("│") > 4}
    expected = {
        "page.png": ("ocr", "tesseract@1", "Kafka"),
        "photo.png": ("detect", "face@1", "face"),
        "speech.wav": ("transcribe", "whisper-tiny-en@1", "stream"),
        "prompt.txt": ("generate", "smollm2@1", "Paris"),
    }
    for name, words in expected.items():
        assert all(w in rows[name] for w in words), rows.get(name)
    assert "4 of 4 answered" in table.stderr
    docs = [json.loads(line) for line in lines.stdout.splitlines()]
    assert lines.returncode == 0 and sorted(d["source"] for d in docs) == sorted(expected)
    assert all(d["status"] == "ok" for d in docs)


async def test_send_saves_speech_with_output(starter_settings: Settings, tmp_path: Path) -> None:
    config = str(write_config(starter_settings, tmp_path / "altlas.yaml"))
    async with serving(starter_settings):
        said = await asyncio.to_thread(
            _altlas, "send", "-c", config, "-t", "tts", "Results are published back to the stream.", "-o",
            str(tmp_path / "out.wav"),
        )  # fmt: skip
        raw = await asyncio.to_thread(
            _altlas, "send", "-c", config, "-t", "tts", "Results are published back to the stream.", "--json"
        )
    assert said.returncode == 0, said.stderr
    assert "joe@1" in said.stdout and "s of speech" in said.stdout
    wav = (tmp_path / "out.wav").read_bytes()
    assert sniff(wav) == "audio/wav"
    audio, rate = sf.read(io.BytesIO(wav))
    assert rate == 22050 and 1.0 < len(audio) / rate < 6.0 and abs(audio).max() > 0.1
    doc = json.loads(raw.stdout)  # the raw result carries the same audio, as base64
    assert base64.b64decode(doc["output"]["audio"]) == wav  # the voice has no sampling noise


# ------------------------------------------------------------------ the first hour, as a test
def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "altlas.orchestration", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return err


async def _until_answered(
    target: str, *args: str, env: dict[str, str] | None = None, deadline_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """`altlas send` until the starting instance answers (it creates its topics first)."""
    deadline = time.monotonic() + deadline_s
    while True:
        done = await asyncio.to_thread(_altlas, "send", target, *args, "--json", "--timeout", "60", env=env)
        if done.returncode != 1 or time.monotonic() > deadline:
            return done
        await asyncio.sleep(1)


async def test_the_first_hour_broker_up_run_send_and_status_answer_with_trained_models(
    starter_registry: Path, samples: Path, tmp_path: Path
) -> None:
    """The README's walk-through, with nothing configured: only the broker address, as users give it.

    (``starter_registry`` only fetches the models beforehand, so a cold cache does not eat the wait.)
    """
    env = {"ALTLAS_LOCAL_BROKER__STATE_DIR": str(tmp_path / "broker")}
    up = await asyncio.to_thread(_altlas, "broker", "up", env=env)
    assert up.returncode == 0 and up.stdout.startswith("bootstrap="), up.stderr
    env["KAFKA_BOOTSTRAP_SERVERS"] = up.stdout.strip().split("=", 1)[1]
    try:
        proc = _start("run", env=env)
        try:
            page = await _until_answered(str(samples / "page.png"), env=env)
            speech = await asyncio.to_thread(_altlas, "send", str(samples / "speech.wav"), "--json", env=env)
            sentence = await asyncio.to_thread(_altlas, "send", "The capital of France is", "--json", env=env)
            status = await asyncio.to_thread(_altlas, "status", env=env)
        finally:
            log = _stop(proc)
    finally:
        await asyncio.to_thread(_altlas, "broker", "down", env=env)
    assert "serving the starter registry" in log and "smollm2" in log and "left out" not in log, log[-2000:]
    results = [json.loads(done.stdout) for done in (page, speech, sentence)]
    assert [(r["task"], r["model_id"]) for r in results] == [
        ("ocr", "tesseract"),
        ("transcribe", "whisper-tiny-en"),
        ("generate", "smollm2"),
    ]
    assert "Kafka carries each request" in " ".join(results[0]["output"]["text"].split())
    assert word_recall(SPOKEN, results[1]["output"]["text"]) >= 0.7
    assert "Paris" in results[2]["output"]["text"]
    assert status.returncode == 0, status.stderr
    models = {line.split("│")[1].strip(): line for line in status.stdout.splitlines() if "ready" in line}
    assert set(models) == {"tesseract", "whisper-tiny-en", "smollm2"}, status.stdout


async def test_altlas_run_registry_none_serves_nothing(
    kafka_bootstrap: str, samples: Path, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, None)
    config = str(write_config(settings, tmp_path / "altlas.yaml"))
    proc = _start("run", "-c", config, "--registry", "none")
    try:
        done = await _until_answered(str(samples / "page.png"), "-c", config)
    finally:
        log = _stop(proc)
    assert "starter" not in log and "no model registry configured" in log
    assert done.returncode == 2 and json.loads(done.stdout)["error"]["code"] in (
        "UNKNOWN_TASK",
        "UNKNOWN_MODEL",
    )
