"""The HTTP gateway: each old REST endpoint answered with a real result through the real broker.

Every test talks HTTP to a real uvicorn server on a loopback port; the gateway
publishes request events to the session's Kafka broker, a real orchestrator
answers them with real models, and the gateway's shared result readers route
each answer back to its HTTP call.
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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from altlas.orchestration.app.settings import GatewaySettings, Settings
from altlas.orchestration.devtools.localkafka import free_port
from altlas.schemas.types import VisionRequest
from tests.builders import MEAN_COLOR_LABELS, expected_mean_color
from tests.conftest import isolated_settings, serving, write_config
from tests.images import rotated_page, solid

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
gateway_module = pytest.importorskip("altlas.orchestration.clients.gateway")


@dataclass
class Stack:
    """An orchestrator, a gateway server in front of it, and an HTTP client."""

    settings: Settings
    gateway: Any
    http: Any


@pytest.fixture(scope="module")
async def vision_stack(kafka_bootstrap: str, registry_file: Path) -> AsyncIterator[Stack]:
    """altlas serving the test registry (orientation, mean-color), and the gateway on a free port."""
    settings = isolated_settings(kafka_bootstrap, registry_file, modalities=["vision"])
    async with serving(settings):
        async with serve_gateway(settings) as stack:
            yield stack


class serve_gateway:
    """``create_app`` served by uvicorn in this event loop (lifespan included) on a free loopback port."""

    def __init__(self, settings: Settings, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.gateway = gateway_module.Gateway(settings, timeout_s=timeout_s)
        app = gateway_module.create_app(settings, gateway=self.gateway)
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        )
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Stack:
        self.task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + 60
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise RuntimeError("the gateway server exited at start")
            assert time.monotonic() < deadline, "gateway did not start"
            await asyncio.sleep(0.05)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=120)
        return Stack(self.settings, self.gateway, self.http)

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait_for(self.task, 60)


def _top(body: dict[str, Any]) -> str:
    return str(body["output"]["labels"][0]["label"])


# ------------------------------------------------------------------ /api/vision/{task}
async def test_vision_classify_multipart_upload_returns_the_trained_models_label(vision_stack: Stack) -> None:
    response = await vision_stack.http.post(
        "/api/vision/classify", files={"file": ("page.png", rotated_page(90), "image/png")}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert _top(body) == "90"
    assert body["model_id"] == "orientation"
    assert response.headers["x-model"] == "orientation@1"
    assert response.headers["x-request-id"] == body["request_id"]
    assert body["metadata"]["gateway"] == "http"


async def test_vision_classify_raw_body_takes_model_and_params_from_the_query(vision_stack: Stack) -> None:
    rgb = (30, 40, 230)
    response = await vision_stack.http.post(
        "/api/vision/classify",
        params={"model": "mean-color@1", "top_k": "4"},
        content=solid(rgb),
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    want = expected_mean_color(rgb)
    assert _top(body) == MEAN_COLOR_LABELS[int(np.argmax(want))] == "blue"
    scores = {label["index"]: label["score"] for label in body["output"]["labels"]}
    assert len(scores) == 4  # top_k from the query reached the pipeline
    assert np.allclose([scores[i] for i in range(4)], want, atol=1e-6)


async def test_vision_form_fields_are_params(vision_stack: Stack) -> None:
    response = await vision_stack.http.post(
        "/api/vision/classify",
        files={"file": ("page.jpg", rotated_page(270, "JPEG"), "image/jpeg")},
        data={"top_k": "2"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert _top(body) == "270"
    assert len(body["output"]["labels"]) == 2


async def test_unknown_model_is_404_with_altlas_error_code(vision_stack: Stack) -> None:
    response = await vision_stack.http.post(
        "/api/vision/classify", params={"model": "no-such-model"}, content=solid((1, 2, 3))
    )
    assert response.status_code == 404
    body = response.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == "UNKNOWN_MODEL"
    assert "no-such-model" in body["error"]["message"]


async def test_model_that_cannot_load_is_503_model_unavailable(vision_stack: Stack) -> None:
    response = await vision_stack.http.post(
        "/api/vision/classify", params={"model": "broken"}, content=solid((1, 2, 3))
    )
    assert response.status_code == 503
    body = response.json()
    assert body["error"]["code"] == "MODEL_UNAVAILABLE"
    assert body["model_id"] == "broken"


async def test_corrupt_image_is_400_invalid_payload(vision_stack: Stack) -> None:
    response = await vision_stack.http.post("/api/vision/classify", content=b"\x89PNG\r\n\x1a\nbroken")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "INVALID_PAYLOAD"


async def test_unknown_task_is_404_without_publishing(vision_stack: Stack) -> None:
    started = time.monotonic()
    response = await vision_stack.http.post("/api/vision/colorize", content=solid((1, 2, 3)))
    assert response.status_code == 404
    body = response.json()
    assert body["error"]["code"] == "UNKNOWN_TASK"
    assert "colorize" in body["error"]["message"]
    assert "request_id" not in body  # refused before a request event existed
    assert time.monotonic() - started < 2


async def test_concurrent_calls_each_get_their_own_result(vision_stack: Stack) -> None:
    colours = [(i * 37 % 256, i * 91 % 256, i * 53 % 256) for i in range(24)]

    async def classify(rgb: tuple[int, int, int]) -> tuple[tuple[int, int, int], dict[str, Any]]:
        response = await vision_stack.http.post(
            "/api/vision/classify", params={"model": "mean-color@1", "top_k": "4"}, content=solid(rgb)
        )
        assert response.status_code == 200, response.text
        return rgb, response.json()

    answers = await asyncio.gather(*(classify(rgb) for rgb in colours))
    assert len({body["request_id"] for _, body in answers}) == len(colours)
    for rgb, body in answers:
        scores = {label["index"]: label["score"] for label in body["output"]["labels"]}
        assert np.allclose([scores[i] for i in range(4)], expected_mean_color(rgb), atol=1e-6), rgb
    assert vision_stack.gateway.waiters["vision"].waiting == 0  # nothing left behind


# ------------------------------------------------------------------ /api/inference
async def test_inference_json_with_base64_payload_detects_the_modality(vision_stack: Stack) -> None:
    response = await vision_stack.http.post(
        "/api/inference",
        json={"task": "classify", "payload_base64": base64.b64encode(rotated_page(180)).decode()},
    )
    assert response.status_code == 200, response.text
    assert _top(response.json()) == "180"
    qualified = await vision_stack.http.post(
        "/api/inference",
        json={
            "task": "vision.classify",
            "model": "orientation@1",
            "params": {"top_k": 1},
            "payload_base64": base64.b64encode(rotated_page(0)).decode(),
        },
    )
    assert qualified.status_code == 200, qualified.text
    assert [label["label"] for label in qualified.json()["output"]["labels"]] == ["0"]


async def test_inference_rejects_bad_bodies_before_kafka(vision_stack: Stack) -> None:
    both = await vision_stack.http.post(
        "/api/inference", json={"task": "classify", "payload": "x", "payload_base64": "eA=="}
    )
    assert both.status_code == 400 and both.json()["error"]["code"] == "INVALID_PAYLOAD"
    not_b64 = await vision_stack.http.post(
        "/api/inference", json={"task": "classify", "payload_base64": "!!"}
    )
    assert not_b64.status_code == 400 and "base64" in not_b64.json()["error"]["message"]
    text = await vision_stack.http.post("/api/inference", json={"task": "generate", "payload": "hello"})
    assert text.status_code == 404  # this gateway serves vision only
    assert "text" in text.json()["error"]["message"]


# ------------------------------------------------------------------ /api/models
async def test_models_lists_the_registry_with_reported_state(vision_stack: Stack) -> None:
    warm = await vision_stack.http.post("/api/vision/classify", content=rotated_page(0))
    assert warm.status_code == 200
    deadline = time.monotonic() + 20
    while True:
        response = await vision_stack.http.get("/api/models")
        assert response.status_code == 200
        body = response.json()
        models = {m["key"]: m for m in body["models"]}
        states = {s["state"] for s in models["orientation@1"]["status"]}
        if "ready" in states or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert set(models) == {"orientation@1", "mean-color@1", "mean-color@2", "broken@1"}
    orientation = models["orientation@1"]
    assert orientation["task"] == "vision.classify" and orientation["backend"] == "onnx"
    assert orientation["default_for"] == ["vision.classify"]
    assert body["defaults"] == {"vision.classify": "orientation@1"}
    (status,) = [s for s in orientation["status"] if s["state"] == "ready"]
    assert status["instance"] == vision_stack.settings.instance_id
    assert status["memory_bytes"] > 0
    assert "path" not in orientation  # the gateway does not expose file paths


# ------------------------------------------------------------------ timeouts
async def test_no_answer_within_the_timeout_is_504_and_the_request_carries_that_deadline(
    kafka_bootstrap: str, registry_file: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, registry_file, modalities=["vision"])  # nobody serves it
    async with serve_gateway(settings) as stack:
        started = time.monotonic()
        response = await stack.http.post(
            "/api/vision/classify", params={"timeout_s": "1"}, content=solid((9, 9, 9))
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 504
        body = response.json()
        assert body["error"]["code"] == "GATEWAY_TIMEOUT"
        assert 0.9 < elapsed < 5
        assert stack.gateway.waiters["vision"].waiting == 0
        client = stack.gateway.client
        async with client.reader(settings.topics.requests("vision"), from_beginning=True) as reader:
            records = await reader.read(5)
    (rec,) = records
    request = client.codec.decode_record(rec.value, VisionRequest)
    assert request.request_id == body["request_id"] == rec.key.decode()
    assert request.deadline is not None
    assert abs((request.deadline - request.created_at).total_seconds() - 1.0) < 0.2


# ------------------------------------------------------------------ audio and text
@pytest.fixture(scope="module")
async def audio_text_stack(
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    whisper_dir: Path,
    piper_voice: Path,
    ge2e_weights: Path,
    silero_vad_onnx: Path,
    audio_models: Path,
    minilm_dir: Path,
) -> AsyncIterator[Stack]:
    """altlas with the audio fixtures' trained models (Whisper tiny.en, espeak-ng) and MiniLM embeddings."""
    pytest.importorskip("faster_whisper")
    from tests.fixtures_audio import audio_registry_doc

    doc = audio_registry_doc(whisper_dir, piper_voice, ge2e_weights, silero_vad_onnx, audio_models)
    # Its deliberately corrupt pickle lives outside the trusted model folders, and is not needed here.
    doc["models"] = [m for m in doc["models"] if m["id"] != "broken-speakers"]
    doc["models"].append(
        {
            "id": "minilm",
            "task": "text.embed",
            "backend": "onnx",
            "path": str(minilm_dir / "model.onnx"),
            "params": {"max_length": 256},
        }
    )
    registry = tmp_path_factory.mktemp("gateway-registry") / "models.yaml"
    registry.write_text(yaml.safe_dump(doc))
    settings = isolated_settings(kafka_bootstrap, registry, modalities=["text", "audio"])
    async with serving(settings):
        async with serve_gateway(settings, timeout_s=120) as stack:
            yield stack


async def test_audio_transcribe_upload_returns_the_spoken_words(audio_text_stack: Stack) -> None:
    from tests.fixtures_audio import espeak, wav_bytes, word_recall

    sentence = "Kafka carries the requests to the model."
    response = await audio_text_stack.http.post(
        "/api/audio/transcribe",
        files={"file": ("speech.wav", wav_bytes(espeak(sentence)), "audio/wav")},
        data={"language": "en", "word_timestamps": "true"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == "whisper-tiny-en"
    assert body["output"]["language"] == "en"
    assert body["output"]["words"], "word_timestamps from the form reached the pipeline"
    assert word_recall(sentence, body["output"]["text"]) >= 0.8, body["output"]["text"]


async def test_audio_tts_answers_raw_wav_when_accept_asks_and_json_otherwise(audio_text_stack: Stack) -> None:
    import soundfile as sf

    from tests.fixtures_audio import word_recall

    text = "Hello from the gateway."
    wav = await audio_text_stack.http.post(
        "/api/audio/tts", params={"model": "espeak"}, content=text.encode(), headers={"accept": "audio/wav"}
    )
    assert wav.status_code == 200, wav.text
    assert wav.headers["content-type"] == "audio/wav"
    samples, rate = sf.read(io.BytesIO(wav.content))
    assert 0.5 < samples.size / rate < 5
    as_json = await audio_text_stack.http.post("/api/audio/tts", data={"text": text, "model": "espeak"})
    assert as_json.status_code == 200, as_json.text
    speech = as_json.json()["output"]
    assert speech["format"] == "wav"
    assert base64.b64decode(speech["audio"], validate=True)[:4] == b"RIFF"  # standard base64
    # The synthesized speech is real speech: Whisper hears the words back through the gateway.
    heard = await audio_text_stack.http.post(
        "/api/audio/transcribe", content=wav.content, headers={"content-type": "audio/wav"}
    )
    assert heard.status_code == 200, heard.text
    assert word_recall(text, heard.json()["output"]["text"]) >= 0.6, heard.json()["output"]["text"]


async def test_audio_unknown_model_is_404(audio_text_stack: Stack) -> None:
    response = await audio_text_stack.http.post(
        "/api/audio/transcribe", params={"model": "no-such-whisper"}, content=b"RIFF....WAVE"
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "UNKNOWN_MODEL"


async def test_inference_text_embed_returns_a_unit_vector(audio_text_stack: Stack) -> None:
    async def embed(text: str) -> np.ndarray:
        response = await audio_text_stack.http.post(
            "/api/inference", json={"task": "embed", "modality": "text", "model": "minilm", "payload": text}
        )
        assert response.status_code == 200, response.text
        output = response.json()["output"]
        assert output["dim"] == 384 == len(output["vector"])
        return np.asarray(output["vector"])

    cat, kitten, invoice = await asyncio.gather(
        embed("A cat sleeps on the sofa."),
        embed("A kitten naps on the couch."),
        embed("Quarterly tax invoice."),
    )
    assert abs(float(np.linalg.norm(cat)) - 1.0) < 1e-3
    assert float(cat @ kitten) > float(cat @ invoice) + 0.2  # the trained model groups meaning


# ------------------------------------------------------------------ the CLI command
async def test_altlas_gateway_command_serves_the_models_endpoint(
    kafka_bootstrap: str, registry_file: Path, tmp_path: Path
) -> None:
    settings = isolated_settings(kafka_bootstrap, registry_file, modalities=["vision"])
    config = write_config(settings, tmp_path / "settings.yaml")
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = _start_gateway(port, config, log)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    response = await http.get("/api/models")
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    await asyncio.sleep(0.2)
        assert response.status_code == 200
        assert {m["key"] for m in response.json()["models"]} >= {"orientation@1", "mean-color@2"}
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down cleanly, then re-raises the signal it caught: exit by SIGTERM, in time.
        assert await asyncio.to_thread(proc.wait, 30) in (0, -signal.SIGTERM), log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()


def _start_gateway(port: int, config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``altlas gateway`` as a real process, without this shell's ALTLAS_* variables."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "altlas.orchestration",
                "gateway",
                "--port",
                str(port),
                "--config",
                str(config),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")},
        )


# ------------------------------------------------------------------ the migration note
def test_every_old_endpoint_in_the_migration_table_is_a_gateway_route(settings: Settings) -> None:
    import re

    text = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    section = text.split("## Migrating from the REST endpoints", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = [re.findall(r"`(GET|POST) ([^`]+)`", row) for row in rows]
    assert len(rows) == 4
    app = gateway_module.create_app(settings)
    served = {(method, route.path) for route in app.routes for method in getattr(route, "methods", ())}
    for endpoints in documented:
        old, gateway_route = endpoints[0], endpoints[-1]
        assert old == gateway_route, "the gateway keeps each old path"
        assert old in served, f"{old} is documented but not served"
    assert {d[0][1] for d in documented} == {
        "/api/models",
        "/api/inference",
        "/api/vision/{task}",
        "/api/audio/{task}",
    }


# ------------------------------------------------------------------ least privilege
def _guarded(settings: Settings, **gateway: Any) -> Settings:
    """``settings`` with gateway limits and keys (the orchestrator behind it is unchanged)."""
    return settings.model_copy(update={"gateway": GatewaySettings.model_validate(gateway)})


async def _raw_call(
    port: int, head: str, chunks: tuple[bytes, ...] = (), timeout_s: float = 10
) -> tuple[int, Any]:
    """One HTTP/1.1 exchange on a raw socket: send exactly ``head`` and ``chunks``, read status and JSON body.

    httpx always sends the whole body it is given; a raw socket can declare a body and never send it,
    or stop a chunked body half way, and still read the answer.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n")
        for chunk in chunks:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        await writer.drain()
        status = int((await asyncio.wait_for(reader.readline(), timeout_s)).split()[1])
        headers = {}
        while (line := await asyncio.wait_for(reader.readline(), timeout_s)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout_s)
        return status, json.loads(body)
    finally:
        writer.close()


async def test_a_keyed_gateway_answers_only_calls_that_carry_a_key(vision_stack: Stack) -> None:
    settings = _guarded(vision_stack.settings, api_keys=["key-one", "key-two"])
    async with serve_gateway(settings) as stack:
        assert stack.gateway.client is not None
        async with stack.gateway.client.reader(settings.topics.requests("vision")) as published:
            image = rotated_page(90)
            refused = [
                await stack.http.post("/api/vision/classify", content=image),
                await stack.http.post(
                    "/api/vision/classify", content=image, headers={"x-api-key": "key-three"}
                ),
                await stack.http.post(
                    "/api/vision/classify",
                    content=image,
                    headers={"authorization": "Bearer key-one-and-more"},
                ),
                await stack.http.get("/api/models"),
            ]
            for response in refused:
                assert response.status_code == 401, response.text
                assert response.json()["error"]["code"] == "UNAUTHORIZED"
                assert response.headers["www-authenticate"].startswith("Bearer")
            assert await published.read(1.0) == []  # refused calls publish nothing
            bearer = await stack.http.post(
                "/api/vision/classify", content=image, headers={"authorization": "Bearer key-two"}
            )
            header = await stack.http.post(
                "/api/vision/classify", content=image, headers={"x-api-key": "key-one"}
            )
            for response in (bearer, header):
                assert response.status_code == 200, response.text
                assert _top(response.json()) == "90"
            records = await published.read(1.0)
            records += await published.read(1.0)  # one poll may return one partition's records
            assert len(records) == 2
        health = await stack.http.get("/healthz")  # container health checks carry no key
        assert health.status_code == 200


async def test_a_declared_body_over_the_limit_is_413_before_any_of_it_is_read(vision_stack: Stack) -> None:
    async with serve_gateway(_guarded(vision_stack.settings, max_body_bytes=4096)) as stack:
        # 100 MB declared, none sent: only an answer given without reading can arrive.
        status, body = await _raw_call(
            stack.http.base_url.port,
            "POST /api/vision/classify HTTP/1.1\nHost: gw\nContent-Type: image/png\n"
            "Content-Length: 100000000\n",
        )
        assert status == 413
        assert body["error"]["code"] == "PAYLOAD_TOO_LARGE" and "4096" in body["error"]["message"]
        image = solid((30, 40, 230))
        assert len(image) < 4096
        small = await stack.http.post("/api/vision/classify", params={"model": "mean-color@1"}, content=image)
        assert small.status_code == 200 and _top(small.json()) == "blue"  # under the limit: served


@pytest.mark.parametrize(
    ("path", "content_type"), [("/api/vision/classify", "image/png"), ("/api/inference", "application/json")]
)
async def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(
    vision_stack: Stack, path: str, content_type: str
) -> None:
    async with serve_gateway(_guarded(vision_stack.settings, max_body_bytes=4096)) as stack:
        # 6 KB of a body that never ends: the answer comes once 4 KB have passed, not at the end.
        status, body = await _raw_call(
            stack.http.base_url.port,
            f"POST {path} HTTP/1.1\nHost: gw\nContent-Type: {content_type}\nTransfer-Encoding: chunked\n",
            (b"x" * 2048, b"x" * 2048, b"x" * 2048),
        )
        assert status == 413
        assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert stack.gateway.waiters["vision"].waiting == 0


async def test_calls_over_the_concurrency_cap_are_503_at_once(
    kafka_bootstrap: str, registry_file: Path
) -> None:
    settings = _guarded(  # nobody serves these topics: every call waits out its timeout
        isolated_settings(kafka_bootstrap, registry_file, modalities=["vision"]), max_concurrent=2
    )
    async with serve_gateway(settings) as stack:

        async def call(timeout_s: float) -> Any:
            return await stack.http.post(
                "/api/vision/classify", params={"timeout_s": str(timeout_s)}, content=solid((5, 5, 5))
            )

        waiting = [asyncio.create_task(call(4)), asyncio.create_task(call(4))]
        deadline = time.monotonic() + 10
        while stack.gateway.waiters["vision"].waiting < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        started = time.monotonic()
        busy = await call(4)
        assert time.monotonic() - started < 1.0  # answered at once, not queued
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "GATEWAY_BUSY"
        assert (await stack.http.get("/healthz")).status_code == 200  # health is never turned away
        assert [r.status_code for r in await asyncio.gather(*waiting)] == [504, 504]
        again = await call(0.5)
        assert again.status_code == 504  # a slot is free again: admitted (and timed out upstream)
