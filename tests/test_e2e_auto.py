"""`task: auto` on the real broker: text, image and audio payloads each get the right task, and say why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from altlas.orchestration.clients.client import make_request
from altlas.schemas.types import Detection, Ocr, ResultStatus, TextGeneration, Transcription
from tests.conftest import connect, isolated_settings, serving
from tests.fixtures_audio import espeak, wav_bytes, word_recall
from tests.images import rotated_page


async def test_auto_picks_ocr_detection_transcription_and_generation_by_payload(
    kafka_bootstrap: str,
    tmp_path: Path,
    haar_face: Path,
    astronaut_png: bytes,
    whisper_dir: Path,
    smollm2_gguf: Path,
) -> None:
    doc: dict[str, Any] = {
        "models": [
            {
                "id": "tesseract",
                "task": "vision.ocr",
                "backend": "tesseract",
                "params": {"lang": "eng", "psm": 6},
            },
            {
                "id": "face",
                "task": "vision.detect",
                "backend": "opencv-cascade",
                "path": str(haar_face),
                "metadata": {"labels": ["face"]},
            },
            {
                "id": "whisper",
                "task": "audio.transcribe",
                "backend": "faster-whisper",
                "path": str(whisper_dir),
                "params": {"compute_type": "int8"},
            },
            {
                "id": "smollm2",
                "tasks": ["text.generate", "text.chat"],
                "backend": "llama.cpp",
                "path": str(smollm2_gguf),
                "params": {"n_ctx": 1024},
            },
        ]
    }
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump(doc))
    settings = isolated_settings(kafka_bootstrap, registry)
    spoken = "the orchestrator reads every request from the stream"
    asks = {
        "page": make_request("vision", "auto", rotated_page(0)),
        "photo": make_request("vision", "auto", astronaut_png),
        "speech": make_request("audio", "auto", wav_bytes(espeak(spoken))),
        "prompt": make_request(
            "text", "auto", "The capital of France is", params={"max_tokens": 4, "temperature": 0}
        ),
    }
    async with serving(settings):
        async with connect(settings) as client:
            results = {name: await client.request(req, timeout_s=120) for name, req in asks.items()}
    for name, result in results.items():
        assert result is not None and result.status is ResultStatus.OK, (name, result)
        assert result.attributes["detected_task"] == result.task and result.attributes["detected_reason"]
    page, photo, speech, prompt = (results[k] for k in ("page", "photo", "speech", "prompt"))
    assert page.task == "ocr" and "text page" in page.attributes["detected_reason"]
    assert isinstance(page.output, Ocr) and "Kafka" in page.output.text
    assert photo.task == "detect" and isinstance(photo.output, Detection)
    assert [b.class_name for b in photo.output.boxes] == ["face"]
    assert speech.task == "transcribe" and isinstance(speech.output, Transcription)
    assert word_recall(spoken, speech.output.text) >= 0.7
    assert prompt.task == "generate" and isinstance(prompt.output, TextGeneration)
    assert "Paris" in prompt.output.text
