"""vision.detect on real trained detectors (Haar face, PicoDet layout) and on YOLO models built on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from altlas.models.errors import ModelLoadError
from altlas.models.runtime import ModelRuntime
from altlas.pipelines.detection import DetectionPipeline
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import Box, Detection
from tests.fixtures_vision import YOLO_ARCHS, load_runtime
from tests.vision_builders import LAYOUT_PARAMS, document_page, encode, scene, text_lines

PIPELINE = DetectionPipeline()


def detect(runtime: ModelRuntime, images: list[bytes], params: dict[str, Any] | None = None) -> list[Any]:
    items = [PIPELINE.prepare(img, params or {}, runtime.spec) for img in images]
    return PIPELINE.run(runtime, items)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def corners(box: Box) -> tuple[float, float, float, float]:
    return (box.x1, box.y1, box.x2, box.y2)


def assert_contract(det: Any, width: int, height: int, *, conf: float, max_det: int) -> None:
    """Boxes in original pixels inside the image, ordered corners, scores in [conf, 1], known names."""
    assert isinstance(det, Detection)
    assert (det.image_width, det.image_height) == (width, height)
    assert len(det.boxes) <= max_det
    for box in det.boxes:
        assert 0 <= box.x1 <= box.x2 <= width and 0 <= box.y1 <= box.y2 <= height, box
        assert conf <= box.score <= 1.0
        assert box.class_name == f"thing{box.class_id}"


# ------------------------------------------------------------------ trained: OpenCV Haar cascade
@pytest.fixture(scope="module")
def face_runtime(haar_face: Path) -> ModelRuntime:
    entry = {"id": "face", "task": "vision.detect", "backend": "opencv-cascade", "path": str(haar_face)}
    return load_runtime({**entry, "metadata": {"labels": ["face"]}})


def test_the_haar_cascade_finds_the_astronauts_face(face_runtime: ModelRuntime, astronaut_png: bytes) -> None:
    (det,) = detect(face_runtime, [astronaut_png])
    assert isinstance(det, Detection)
    assert (det.image_width, det.image_height) == (512, 512)
    assert len(det.boxes) == 1
    face = det.boxes[0]
    assert face.class_name == "face" and face.class_id == 0
    assert iou(corners(face), (177, 66, 272, 161)) > 0.8
    assert 0.5 < face.score <= 1.0


def test_the_haar_cascade_finds_no_face_on_a_text_page(face_runtime: ModelRuntime) -> None:
    (det,) = detect(face_runtime, [encode(text_lines(["no faces here, only words"]))])
    assert isinstance(det, Detection) and det.boxes == []


def test_a_face_turned_by_exif_is_found_where_the_viewer_sees_it(
    face_runtime: ModelRuntime, astronaut_png: bytes
) -> None:
    # Stored turned 90 degrees counter-clockwise, with EXIF orientation 6 saying "turn it back".
    stored = Image.open(__import__("io").BytesIO(astronaut_png)).convert("RGB").rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = __import__("io").BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    (det,) = detect(face_runtime, [buf.getvalue()])
    assert len(det.boxes) == 1 and iou(corners(det.boxes[0]), (177, 66, 272, 161)) > 0.7


# ------------------------------------------------------------------ trained: PicoDet document layout (ONNX)
@pytest.fixture(scope="module")
def layout_runtime(layout_model: Path) -> ModelRuntime:
    return load_runtime(
        {
            "id": "layout",
            "task": "vision.detect",
            "backend": "onnx",
            "path": str(layout_model),
            "params": LAYOUT_PARAMS,
        }
    )


def test_the_trained_layout_model_finds_the_title_paragraphs_and_figure(layout_runtime: ModelRuntime) -> None:
    page, regions = document_page()
    (det,) = detect(layout_runtime, [encode(page)])
    assert isinstance(det, Detection)
    by_class: dict[str, list[Box]] = {}
    for box in det.boxes:
        by_class.setdefault(box.class_name, []).append(box)
    for paragraph in regions["text"]:
        best = max(iou(corners(b), paragraph) for b in by_class["text"])
        assert best > 0.8, (paragraph, by_class["text"])
    assert max(iou(corners(b), regions["figure"][0]) for b in by_class["figure"]) > 0.6
    title = regions["title"][0]
    assert any(b.y1 <= title[1] + 10 and b.y2 >= title[3] - 10 for b in by_class["title"])
    assert len(by_class["text"]) == 3
    assert all(0.5 <= b.score <= 1.0 for b in det.boxes)


def test_layout_results_in_a_batch_equal_single_calls(layout_runtime: ModelRuntime) -> None:
    page, _ = document_page()
    images = [encode(page), encode(page.crop((0, 0, 1000, 700))), encode(page.resize((500, 650)))]
    batched = detect(layout_runtime, images)
    assert batched == [detect(layout_runtime, [img])[0] for img in images]
    assert [d.image_height for d in batched] == [1300, 700, 650]


def test_layout_classes_param_keeps_only_those_classes(layout_runtime: ModelRuntime) -> None:
    page, _ = document_page()
    (det,) = detect(layout_runtime, [encode(page)], {"classes": ["figure", "title"]})
    assert {b.class_name for b in det.boxes} == {"figure", "title"}


# ------------------------------------------------------------------ YOLO built on disk (ultralytics)
@pytest.fixture(scope="module")
def yolo_runtimes(yolo_dir: Path) -> Iterator[dict[str, ModelRuntime]]:
    runtimes: dict[str, ModelRuntime] = {}
    for name in [f"det-{family}.pt" for family in YOLO_ARCHS] + ["det-v8.onnx"]:
        entry = {"id": name, "task": "vision.detect", "backend": "ultralytics", "path": str(yolo_dir / name)}
        runtimes[name] = load_runtime({**entry, "params": {"imgsz": 320}})
    yield runtimes
    for runtime in runtimes.values():
        runtime.unload()


SIZES = [(320, 240), (333, 517), (640, 360), (200, 200), (97, 311)]


def _scenes() -> list[bytes]:
    return [encode(scene(i, size)) for i, size in enumerate(SIZES)]


@pytest.mark.parametrize("family", list(YOLO_ARCHS))
def test_yolo_families_return_boxes_in_original_pixels(
    yolo_runtimes: dict[str, ModelRuntime], family: str
) -> None:
    runtime = yolo_runtimes[f"det-{family}.pt"]
    outputs = detect(runtime, _scenes(), {"conf": 0.2, "max_det": 50})
    for (width, height), det in zip(SIZES, outputs, strict=True):
        assert_contract(det, width, height, conf=0.2, max_det=50)
    assert sum(len(d.boxes) for d in outputs) > 0, "the test model must produce boxes to check"


def test_an_onnx_export_batch_equals_single_calls_exactly(yolo_runtimes: dict[str, ModelRuntime]) -> None:
    runtime = yolo_runtimes["det-v8.onnx"]
    images = _scenes()
    batched = detect(runtime, images, {"conf": 0.2})
    singles = [detect(runtime, [img], {"conf": 0.2})[0] for img in images]
    assert batched == singles
    assert sum(len(d.boxes) for d in batched) > 0


def test_a_pt_batch_matches_single_calls_in_request_order(yolo_runtimes: dict[str, ModelRuntime]) -> None:
    # torch on CPU switches convolution algorithm (oneDNN) once the batch exceeds 1, so a batched
    # .pt differs from single calls in float rounding only (up to ~0.2 px); the ONNX export test above
    # shows exact equality. Here: same boxes, same classes, same order, values within rounding.
    runtime = yolo_runtimes["det-v8.pt"]
    images = _scenes()
    batched = detect(runtime, images, {"conf": 0.2})
    singles = [detect(runtime, [img], {"conf": 0.2})[0] for img in images]
    for got, want in zip(batched, singles, strict=True):
        assert (got.image_width, got.image_height) == (want.image_width, want.image_height)
        assert [b.class_id for b in got.boxes] == [b.class_id for b in want.boxes]
        np.testing.assert_allclose(
            [corners(b) for b in got.boxes], [corners(b) for b in want.boxes], atol=0.5
        )
        np.testing.assert_allclose([b.score for b in got.boxes], [b.score for b in want.boxes], atol=1e-3)


def test_params_filter_yolo_boxes(yolo_runtimes: dict[str, ModelRuntime]) -> None:
    runtime = yolo_runtimes["det-v8.onnx"]
    image = _scenes()[2]
    (full,) = detect(runtime, [image], {"conf": 0.2})
    assert len(full.boxes) > 3
    (few,) = detect(runtime, [image], {"conf": 0.2, "max_det": 2})
    assert few.boxes == full.boxes[:2]
    common = max({b.class_id for b in full.boxes}, key=lambda c: sum(b.class_id == c for b in full.boxes))
    (only,) = detect(runtime, [image], {"conf": 0.2, "classes": [f"thing{common}"]})
    assert only.boxes and {b.class_id for b in only.boxes} == {common}
    (by_id,) = detect(runtime, [image], {"conf": 0.2, "classes": str(common)})
    assert by_id == only
    threshold = sorted(b.score for b in full.boxes)[len(full.boxes) // 2]
    (sure,) = detect(runtime, [image], {"conf": threshold})
    assert sure.boxes and all(b.score >= threshold for b in sure.boxes)
    (small,) = detect(runtime, [image], {"conf": 0.2, "imgsz": 160})
    assert small != full and small.image_width == full.image_width


@pytest.mark.parametrize(
    "params",
    [
        {"conf": 1.5},
        {"conf": "high"},
        {"iou": -0.1},
        {"max_det": 0},
        {"imgsz": 333},
        {"classes": []},
        {"conf": True},
    ],
)
def test_bad_detect_params_are_invalid_params(
    yolo_runtimes: dict[str, ModelRuntime], params: dict[str, Any]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        PIPELINE.prepare(_scenes()[0], params, yolo_runtimes["det-v8.pt"].spec)
    assert caught.value.code is ErrorCode.INVALID_PARAMS


def test_an_unknown_class_fails_only_its_own_request(yolo_runtimes: dict[str, ModelRuntime]) -> None:
    runtime = yolo_runtimes["det-v8.onnx"]
    good, bad = _scenes()[:2]
    out = detect(runtime, [good], {"conf": 0.2}) + detect(runtime, [bad], {"classes": ["unicorn"]})
    mixed = PIPELINE.run(
        runtime,
        [
            PIPELINE.prepare(good, {"conf": 0.2}, runtime.spec),
            PIPELINE.prepare(bad, {"classes": ["unicorn"]}, runtime.spec),
        ],
    )
    assert isinstance(mixed[0], Detection) and mixed[0] == out[0]
    assert isinstance(mixed[1], InvalidRequestError) and mixed[1].code is ErrorCode.INVALID_PARAMS
    assert "unicorn" in str(mixed[1])


def test_a_classifier_registered_as_a_detector_fails_to_load(yolo_dir: Path) -> None:
    entry = {"id": "c", "task": "vision.detect", "backend": "ultralytics", "path": str(yolo_dir / "cls.pt")}
    with pytest.raises(ModelLoadError, match="classify model"):
        load_runtime(entry)


def test_a_missing_weights_file_is_a_load_error_not_a_download(tmp_path: Path) -> None:
    entry = {
        "id": "m",
        "task": "vision.detect",
        "backend": "ultralytics",
        "path": str(tmp_path / "yolov8n.pt"),
    }
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_runtime(entry)


def test_a_corrupt_weights_file_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a torch checkpoint")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_runtime({"id": "b", "task": "vision.detect", "backend": "ultralytics", "path": str(path)})
