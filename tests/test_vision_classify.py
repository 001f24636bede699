"""vision.classify on an ultralytics YOLO-cls model built on disk (the ONNX path is in test_pipelines.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from altlas.models.runtime import ModelRuntime
from altlas.pipelines.image_classification import ImageClassificationPipeline
from altlas.schemas.types import Classification
from tests.fixtures_vision import load_runtime
from tests.vision_builders import encode, scene

PIPELINE = ImageClassificationPipeline()


@pytest.fixture(scope="module")
def yolo_cls(yolo_dir: Path) -> ModelRuntime:
    entry = {
        "id": "cls",
        "task": "vision.classify",
        "backend": "ultralytics",
        "path": str(yolo_dir / "cls.pt"),
    }
    return load_runtime(entry)


def test_a_yolo_classifier_gives_top_k_of_its_own_classes(yolo_cls: ModelRuntime) -> None:
    image = encode(scene(1))
    (top,) = PIPELINE.run(yolo_cls, [PIPELINE.prepare(image, {"top_k": 5}, yolo_cls.spec)])
    (full,) = PIPELINE.run(yolo_cls, [PIPELINE.prepare(image, {"top_k": 1000}, yolo_cls.spec)])
    assert isinstance(top, Classification) and isinstance(full, Classification)
    assert len(top.labels) == 5 and len(full.labels) == 1000
    assert top.labels == full.labels[:5]
    scores = [label.score for label in full.labels]
    assert scores == sorted(scores, reverse=True)
    assert abs(sum(scores) - 1.0) < 1e-4 and all(0 <= s <= 1 for s in scores)
    assert all(label.label == f"thing{label.index}" for label in full.labels)
    assert sorted(label.index for label in full.labels) == list(range(1000))


def test_a_yolo_classifier_batch_matches_single_calls_in_order(yolo_cls: ModelRuntime) -> None:
    images = [encode(scene(i, size)) for i, size in enumerate([(320, 240), (64, 64), (500, 90), (224, 224)])]
    items = [PIPELINE.prepare(img, {"top_k": 3}, yolo_cls.spec) for img in images]
    batched = PIPELINE.run(yolo_cls, items)
    singles = [PIPELINE.run(yolo_cls, [item])[0] for item in items]
    assert [[lab.index for lab in out.labels] for out in batched] == [  # type: ignore[union-attr]
        [lab.index for lab in out.labels]
        for out in singles  # type: ignore[union-attr]
    ]
    np.testing.assert_allclose(
        [[lab.score for lab in out.labels] for out in batched],  # type: ignore[union-attr]
        [[lab.score for lab in out.labels] for out in singles],  # type: ignore[union-attr]
        atol=1e-5,
    )
    # The images are told apart (a random-weight model may still rank the same classes first).
    assert len({tuple(round(lab.score, 6) for lab in out.labels) for out in batched}) == len(images)  # type: ignore[union-attr]
