"""vision.segment: a trained DBNet text map (ONNX, semantic) and YOLO-seg built on disk (instances)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from altlas.models.runtime import ModelRuntime
from altlas.pipelines.masks import decode_rle, encode_rle, mask_polygons
from altlas.pipelines.segmentation import SegmentationPipeline
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import RleMask, Segmentation
from tests.fixtures_vision import load_runtime
from tests.vision_builders import DBNET_PARAMS, document_page, encode, scene

PIPELINE = SegmentationPipeline()


def segment(runtime: ModelRuntime, images: list[bytes], params: dict[str, Any] | None = None) -> list[Any]:
    return PIPELINE.run(runtime, [PIPELINE.prepare(img, params or {}, runtime.spec) for img in images])


# ------------------------------------------------------------------ run-length masks
def test_rle_counts_are_row_major_and_start_with_zeros() -> None:
    mask = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    assert encode_rle(mask) == RleMask(height=2, width=3, counts=[1, 3, 2])
    assert encode_rle(np.ones((2, 2), bool)).counts == [0, 4]
    assert encode_rle(np.zeros((3, 1), bool)).counts == [3]


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trips_any_mask(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 40, 2))
    mask = rng.random(shape) < rng.random()
    rle = encode_rle(mask)
    assert sum(rle.counts) == mask.size
    assert np.array_equal(decode_rle(rle), mask)


def test_decoding_refuses_counts_that_do_not_cover_the_mask() -> None:
    with pytest.raises(ValueError):
        decode_rle(RleMask(height=2, width=2, counts=[1, 2]))


def test_polygons_outline_each_blob_of_a_mask() -> None:
    canvas = Image.new("1", (120, 80), 0)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((10, 10, 40, 60), fill=1)
    draw.ellipse((60, 20, 110, 70), fill=1)
    mask = np.asarray(canvas, dtype=bool)
    polygons = mask_polygons(mask)
    assert len(polygons) == 2
    assert sorted(len(p) for p in polygons)[0] == 8  # the rectangle: 4 corners
    drawn = Image.new("1", (120, 80), 0)
    for poly in polygons:
        ImageDraw.Draw(drawn).polygon(poly, fill=1, outline=1)
    filled = np.asarray(drawn, dtype=bool)
    assert (filled & mask).sum() / (filled | mask).sum() > 0.97


# ------------------------------------------------------------------ trained: DBNet text map (ONNX)
@pytest.fixture(scope="module")
def text_map(dbnet_model: Path) -> ModelRuntime:
    entry = {"id": "text-map", "task": "vision.segment", "backend": "onnx", "path": str(dbnet_model)}
    return load_runtime({**entry, "params": DBNET_PARAMS, "metadata": {"labels": ["text"]}})


def test_the_trained_text_detector_marks_text_lines_and_leaves_the_rest(text_map: ModelRuntime) -> None:
    page, regions = document_page()
    (seg,) = segment(text_map, [encode(page)])
    assert isinstance(seg, Segmentation)
    assert (seg.image_width, seg.image_height) == page.size and seg.instances == []
    (text,) = seg.class_masks
    assert (text.class_id, text.class_name) == (0, "text")
    mask = decode_rle(text.mask)
    assert mask.shape == (page.height, page.width)
    near_text = np.zeros_like(mask)
    for x1, y1, x2, y2 in regions["lines"] + regions["title"]:
        # DBNet marks the shrunk core of each text line (its post-processing dilates it back).
        line = mask[y1:y2, x1:x2]
        assert line.any(axis=0).mean() > 0.95 and line.mean() > 0.25, (x1, y1, x2, y2)
        near_text[max(0, y1 - 8) : y2 + 8, max(0, x1 - 8) : x2 + 8] = True
    assert mask[~near_text].mean() < 0.005  # margins and the figure stay unmarked


def test_a_blank_page_has_no_text_mask(text_map: ModelRuntime) -> None:
    (seg,) = segment(text_map, [encode(Image.new("RGB", (300, 200), "white"))])
    assert seg.class_masks == []


def test_semantic_batches_equal_single_calls(text_map: ModelRuntime) -> None:
    page, _ = document_page()
    images = [encode(page), encode(page.crop((0, 0, 900, 500))), encode(page.resize((320, 416)))]
    assert segment(text_map, images) == [segment(text_map, [img])[0] for img in images]


def test_threshold_param_widens_or_narrows_the_mask(text_map: ModelRuntime) -> None:
    page, _ = document_page()
    loose, strict = (
        segment(text_map, [encode(page)], {"threshold": 0.1})[0],
        segment(text_map, [encode(page)], {"threshold": 0.9})[0],
    )
    assert decode_rle(loose.class_masks[0].mask).sum() > decode_rle(strict.class_masks[0].mask).sum()


def test_an_unknown_class_filter_is_invalid_params(text_map: ModelRuntime) -> None:
    (out,) = segment(text_map, [encode(Image.new("RGB", (64, 64), "white"))], {"classes": ["cat"]})
    assert isinstance(out, InvalidRequestError) and out.code is ErrorCode.INVALID_PARAMS


# ------------------------------------------------------------------ YOLO-seg built on disk (ultralytics)
SIZES = [(320, 240), (333, 517), (200, 200), (97, 311)]


@pytest.fixture(scope="module")
def seg_runtimes(yolo_dir: Path) -> dict[str, ModelRuntime]:
    return {
        name: load_runtime(
            {"id": name, "task": "vision.segment", "backend": "ultralytics", "path": str(yolo_dir / name)}
            | {"params": {"imgsz": 320}}
        )
        for name in ("seg.pt", "seg.onnx")
    }


@pytest.mark.parametrize("name", ["seg.pt", "seg.onnx"])
def test_yolo_instances_carry_box_polygons_and_a_full_size_mask(
    seg_runtimes: dict[str, ModelRuntime], name: str
) -> None:
    images = [encode(scene(i, size)) for i, size in enumerate(SIZES)]
    outputs = segment(seg_runtimes[name], images, {"conf": 0.2, "max_det": 20})
    for (width, height), seg in zip(SIZES, outputs, strict=True):
        assert isinstance(seg, Segmentation)
        assert (seg.image_width, seg.image_height) == (width, height) and seg.class_masks == []
        assert len(seg.instances) <= 20
        for inst in seg.instances:
            assert 0.2 <= inst.score <= 1 and inst.class_name == f"thing{inst.class_id}"
            box = inst.box
            assert box is not None and 0 <= box.x1 <= box.x2 <= width and 0 <= box.y1 <= box.y2 <= height
            mask = decode_rle(inst.mask)
            assert mask.shape == (height, width)
            ys, xs = np.nonzero(mask)
            if len(xs):  # ultralytics crops each mask to its box
                assert xs.min() >= box.x1 - 2 and xs.max() <= box.x2 + 2
                assert ys.min() >= box.y1 - 2 and ys.max() <= box.y2 + 2
            for poly in inst.polygons:
                assert len(poly) % 2 == 0 and len(poly) >= 6
                assert all(mask[int(y), int(x)] for x, y in zip(poly[0::2], poly[1::2], strict=True))
    instances = [inst for seg in outputs for inst in seg.instances]
    assert any(decode_rle(inst.mask).any() for inst in instances), "the test model must produce masks"


def test_a_yolo_seg_onnx_batch_equals_single_calls_exactly(seg_runtimes: dict[str, ModelRuntime]) -> None:
    runtime = seg_runtimes["seg.onnx"]
    images = [encode(scene(i, size)) for i, size in enumerate(SIZES)]
    batched = segment(runtime, images, {"conf": 0.2})
    assert batched == [segment(runtime, [img], {"conf": 0.2})[0] for img in images]
