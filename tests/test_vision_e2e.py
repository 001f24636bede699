"""Vision end to end through the real broker: every task and backend, bad images to dead letters."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.pipelines.detection import DetectionPipeline
from altlas.pipelines.masks import decode_rle
from altlas.schemas.types import Classification, Detection, Ocr, ResultStatus, Segmentation
from tests.conftest import Running, connect, isolated_settings, serving
from tests.fixtures_vision import load_runtime, vision_registry
from tests.images import png_declaring
from tests.vision_builders import document_page, encode, scene, text_lines


@pytest.fixture
def vision_settings(
    kafka_bootstrap: str,
    tmp_path: Path,
    yolo_dir: Path,
    haar_face: Path,
    layout_model: Path,
    dbnet_model: Path,
) -> Settings:
    registry = tmp_path / "vision-models.yaml"
    registry.write_text(yaml.safe_dump(vision_registry(yolo_dir, haar_face, layout_model, dbnet_model)))
    return isolated_settings(
        kafka_bootstrap,
        registry,
        modalities=["vision"],
        limits={"max_image_pixels": 2_000_000},
        models={"trusted_dirs": [str(yolo_dir)]},  # the YOLO .pt files are pickles
    )


@pytest.fixture
async def vision_client(vision_settings: Settings) -> AsyncIterator[AltlasClient]:
    async with connect(vision_settings) as c:
        yield c


@pytest.fixture
async def vision_running(vision_settings: Settings) -> AsyncIterator[Running]:
    async with serving(vision_settings) as run:
        yield run


async def _drain(reader: Any, want: int, timeout_s: float = 60.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        got.extend(await reader.read(0.5))
    return got


async def test_every_vision_task_is_answered_through_kafka(
    vision_running: Running, vision_client: AltlasClient, astronaut_png: bytes, yolo_dir: Path
) -> None:
    client = vision_client
    page, regions = document_page()
    scenes = [
        encode(scene(i, size)) for i, size in enumerate([(320, 240), (333, 517), (200, 200), (640, 360)] * 2)
    ]
    words = ["orchestrator", "micro batching", "dead letters", "kafka streams"]
    requests = [
        make_request("vision", "detect", astronaut_png, request_id="face"),  # the default detector
        make_request("vision", "detect", encode(page), model="layout", request_id="layout"),
        make_request("vision", "segment", encode(page), request_id="text-map"),
        *[
            make_request(
                "vision", "detect", img, model="yolo-onnx", params={"conf": 0.2}, request_id=f"yolo-{i}"
            )
            for i, img in enumerate(scenes)
        ],
        *[
            make_request(
                "vision",
                "segment",
                img,
                model="yolo-seg",
                params={"conf": 0.2, "max_det": 10},
                request_id=f"seg-{i}",
            )
            for i, img in enumerate(scenes[:3])
        ],
        make_request("vision", "detect", scenes[0], model="yolo-seg", request_id="seg-as-detector"),
        *[
            make_request(
                "vision", "classify", img, model="yolo-cls", params={"top_k": 3}, request_id=f"cls-{i}"
            )
            for i, img in enumerate(scenes[:3])
        ],
        *[
            make_request("vision", "ocr", encode(text_lines([w])), params={"psm": 7}, request_id=f"ocr-{i}")
            for i, w in enumerate(words)
        ],
    ]
    ids = [r.request_id for r in requests]
    async with client.reader(client.topics.results("vision")) as reader:
        await client.send_many(requests)
        results = await client.collect(reader, "vision", ids, timeout_s=180)
    assert set(results) == set(ids)
    for rid, result in results.items():
        assert result.status is ResultStatus.OK, (rid, result.error)

    face = results["face"].output
    assert isinstance(face, Detection) and [b.class_name for b in face.boxes] == ["face"]
    assert abs(face.boxes[0].x1 - 177) < 10 and abs(face.boxes[0].y1 - 66) < 10
    layout = results["layout"].output
    assert isinstance(layout, Detection)
    assert sum(b.class_name == "text" for b in layout.boxes) == 3 and any(
        b.class_name == "figure" for b in layout.boxes
    )
    text_map = results["text-map"].output
    assert isinstance(text_map, Segmentation) and text_map.class_masks[0].class_name == "text"
    mask = decode_rle(text_map.class_masks[0].mask)
    x1, y1, x2, y2 = regions["lines"][0]
    assert mask[y1:y2, x1:x2].any(axis=0).mean() > 0.9

    # YOLO results through Kafka are exactly what a direct call of the same model gives.
    direct = load_runtime(
        {
            "id": "yolo-onnx",
            "task": "vision.detect",
            "backend": "ultralytics",
            "path": str(yolo_dir / "det-v8.onnx"),
            "params": {"imgsz": 320},
        }
    )
    pipeline = DetectionPipeline()
    want = pipeline.run(direct, [pipeline.prepare(img, {"conf": 0.2}, direct.spec) for img in scenes])
    assert [results[f"yolo-{i}"].output for i in range(len(scenes))] == want
    assert max(results[f"yolo-{i}"].timings.batch_size for i in range(len(scenes))) > 1

    for i in range(3):
        seg = results[f"seg-{i}"].output
        assert isinstance(seg, Segmentation) and seg.instances
        assert all(
            decode_rle(inst.mask).shape == (seg.image_height, seg.image_width) for inst in seg.instances
        )
        cls = results[f"cls-{i}"].output
        assert isinstance(cls, Classification) and len(cls.labels) == 3
    assert isinstance(results["seg-as-detector"].output, Detection)
    for i, word in enumerate(words):
        out = results[f"ocr-{i}"].output
        assert isinstance(out, Ocr) and out.text == word, out


async def test_bad_images_and_params_get_error_results_and_dead_letters(
    vision_running: Running, vision_client: AltlasClient
) -> None:
    client = vision_client
    good = encode(text_lines(["still answered"]))
    cases = {
        "corrupt": (b"\x89PNG\r\n\x1a\n" + os.urandom(200), {}, "detect", "", "INVALID_PAYLOAD"),
        "truncated": (good[: len(good) // 2], {}, "ocr", "", "INVALID_PAYLOAD"),
        "bomb": (png_declaring(50_000, 50_000), {}, "segment", "", "PAYLOAD_TOO_LARGE"),
        "too-many-pixels": (encode(scene(1, (2000, 1500))), {}, "detect", "", "PAYLOAD_TOO_LARGE"),
        "bad-conf": (good, {"conf": 2.0}, "detect", "yolo", "INVALID_PARAMS"),
        "bad-lang": (good, {"lang": "xx"}, "ocr", "", "INVALID_PARAMS"),
        "bad-class": (good, {"classes": ["unicorn"]}, "detect", "yolo-onnx", "INVALID_PARAMS"),
        "no-weights": (good, {}, "detect", "missing", "MODEL_UNAVAILABLE"),
    }
    requests = [
        make_request("vision", task, data, model=model, params=params, request_id=rid)
        for rid, (data, params, task, model, _) in cases.items()
    ]
    requests.append(make_request("vision", "ocr", good, params={"psm": 7}, request_id="good"))
    dlq = client.reader(client.topics.dead_letter)
    await dlq.start()
    try:
        async with client.reader(client.topics.results("vision")) as reader:
            await client.send_many(requests)
            results = await client.collect(reader, "vision", [r.request_id for r in requests], timeout_s=120)
        letters = [client.decode_dead_letter(r.value) for r in await _drain(dlq, len(cases))]
    finally:
        await dlq.stop()
    for rid, (*_, code) in cases.items():
        assert results[rid].status is ResultStatus.ERROR, rid
        assert results[rid].error is not None and results[rid].error.code == code, (rid, results[rid].error)
    assert results["good"].status is ResultStatus.OK and results["good"].output.text == "still answered"  # type: ignore[union-attr]
    assert {letter.request_id: letter.error_code for letter in letters} == {
        rid: c[-1] for rid, c in cases.items()
    }
    sent = {r.request_id: client.codec.encode_record(r) for r in requests}
    assert all(letter.value == sent[letter.request_id or ""] for letter in letters)
