"""Image decoding safety and image classification, without any broker."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

from altlas.models.onnx import OnnxRuntime
from altlas.models.registry import ModelRegistry
from altlas.orchestration.devtools.assets import ORIENTATION_PARAMS
from altlas.pipelines.base import PipelineLimits
from altlas.pipelines.image import decode_image
from altlas.pipelines.image_classification import ImageClassificationPipeline, Recipe, preprocess
from altlas.pipelines.image_costs import (
    MAX_JPEG_SCANS,
    MAX_PNG_CHUNKS,
    MAX_RLE_BMP_PIXELS,
    MAX_TIFF_CHUNKS,
    MAX_TIFF_ENTRIES,
    jpeg_scans,
)
from altlas.schemas.errors import ErrorCode, InvalidRequestError, PayloadTooLargeError
from altlas.schemas.types import Classification
from tests.builders import MEAN_COLOR_LABELS, expected_mean_color, mean_color_registry
from tests.images import (
    bmp_rle,
    encode,
    jpeg_repeating_a_scan,
    png_declaring,
    png_with_broken_exif,
    png_with_chunks,
    rotated_page,
    solid,
    tiff_with_strips,
)


def test_an_image_declaring_50000_by_50000_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLargeError, match="pixels"):  # Pillow's guard or ours, from the header
        decode_image(png_declaring(50_000, 50_000), max_pixels=40_000_000)


def _never_reached(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> None:
    """Fail the test if Pillow gets as far as ``owner.name``: the refusal must come from the bytes, first."""

    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{owner.__name__}.{name} was reached: the file was not refused before it")

    monkeypatch.setattr(owner, name, reached)


def test_a_jpeg_repeating_one_scan_thousands_of_times_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 36 MP under the pixel limit, 2,000 scans of 10 bytes each: seconds of libjpeg walking every block
    # per scan on a decode thread all tenants share. Counted from the markers, it never reaches libjpeg.
    bomb = jpeg_repeating_a_scan(6000, 6000, 2000)
    assert len(bomb) < 300_000
    _never_reached(monkeypatch, JpegImagePlugin.JpegImageFile, "load")
    with pytest.raises(PayloadTooLargeError, match="scans") as caught:
        decode_image(bomb, max_pixels=40_000_000)
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE


def test_scans_allowed_shrink_as_the_image_grows() -> None:
    # Work is pixels times scans: a small image may have many scans, one near the limit only a few.
    small = jpeg_repeating_a_scan(64, 64, MAX_JPEG_SCANS // 2)
    assert decode_image(small, max_pixels=40_000_000).size == (64, 64)
    with pytest.raises(PayloadTooLargeError, match="scans"):
        decode_image(jpeg_repeating_a_scan(64, 64, MAX_JPEG_SCANS), max_pixels=40_000_000)
    with pytest.raises(PayloadTooLargeError, match="scans"):
        decode_image(jpeg_repeating_a_scan(64, 64, MAX_JPEG_SCANS // 2), max_pixels=64 * 64)


def test_ordinary_progressive_jpegs_decode_and_scan_bytes_in_a_comment_are_not_scans() -> None:
    colour = encode(Image.new("RGB", (48, 32), (10, 200, 30)), "JPEG", progressive=True)
    assert jpeg_scans(colour, 1000) == 10  # libjpeg's progressive default for colour
    # A comment full of 0xFF 0xDA bytes (as an ICC profile or a thumbnail may hold by chance) is skipped.
    comment = b"\xff\xfe" + (2 + 400).to_bytes(2, "big") + b"\xff\xda" * 200
    noisy = colour[:2] + comment + colour[2:]
    assert noisy.count(b"\xff\xda") > MAX_JPEG_SCANS and jpeg_scans(noisy, 1000) == 10
    assert decode_image(noisy, max_pixels=10_000).size == (48, 32)


@pytest.mark.parametrize("rle4", [False, True])
def test_a_large_run_length_bmp_is_refused_before_pillow_decodes_it_in_python(
    monkeypatch: pytest.MonkeyPatch, rle4: bool
) -> None:
    # 26 KB, 40 megapixels: seconds of Python holding the GIL on a decode thread every tenant shares.
    small = bmp_rle(100, 100, rle4=rle4)
    assert decode_image(small, max_pixels=40_000_000).size == (100, 100)
    _never_reached(monkeypatch, BmpImagePlugin.BmpRleDecoder, "decode")
    side = int(MAX_RLE_BMP_PIXELS**0.5) + 1
    with pytest.raises(PayloadTooLargeError, match="run-length"):
        decode_image(bmp_rle(side, side, rle4=rle4), max_pixels=40_000_000)
    with pytest.raises(PayloadTooLargeError, match="run-length"):
        decode_image(bmp_rle(6300, 6300, rle4=rle4), max_pixels=40_000_000)


def test_a_tiff_of_millions_of_strips_is_refused_before_pillow_opens_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pillow makes a Python object per strip while opening: 7.8 million strips took 18 s and 2.3 GB.
    assert decode_image(tiff_with_strips(1000), max_pixels=40_000_000).size == (1, 1000)
    _never_reached(monkeypatch, TiffImagePlugin.TiffImageFile, "_open")
    with pytest.raises(PayloadTooLargeError, match="strips or tiles"):
        decode_image(tiff_with_strips(MAX_TIFF_CHUNKS + 1), max_pixels=40_000_000)


def test_tiff_variants_pillow_accepts_are_counted_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow opens a little-endian file whose magic bytes are swapped ("II\\x00*") as a TIFF; so must the
    # count. And a directory of thousands of entries costs Python time per entry, thrice, in Pillow.
    swapped = tiff_with_strips(MAX_TIFF_CHUNKS + 1)
    swapped = swapped[:2] + b"\x00*" + swapped[4:]
    many = tiff_with_strips(10)
    entries = MAX_TIFF_ENTRIES + 1
    many = many[:8] + entries.to_bytes(2, "little") + many[10:] + bytes(12 * entries)
    _never_reached(monkeypatch, TiffImagePlugin.TiffImageFile, "_open")
    with pytest.raises(PayloadTooLargeError, match="strips or tiles"):
        decode_image(swapped, max_pixels=40_000_000)
    with pytest.raises(PayloadTooLargeError, match="entries"):
        decode_image(many, max_pixels=40_000_000)


def test_task_detection_does_not_open_an_image_its_decode_would_refuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from altlas.orchestration.routing.task_detection import text_likeness

    opened: list[object] = []
    real_open = TiffImagePlugin.TiffImageFile._open

    def counted(self: TiffImagePlugin.TiffImageFile) -> None:
        opened.append(self)
        real_open(self)

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "_open", counted)
    assert text_likeness(tiff_with_strips(MAX_TIFF_CHUNKS + 1)) == 0.0
    assert opened == []
    text_likeness(tiff_with_strips(100))
    assert len(opened) == 1  # an ordinary TIFF is looked at


def test_fill_bytes_before_a_marker_and_padded_run_length_bmps() -> None:
    # Any number of 0xFF may precede a marker code; the count is the same.
    colour = encode(Image.new("RGB", (48, 32), (10, 200, 30)), "JPEG", progressive=True)
    at = colour.index(b"\xff\xda", 2)
    filled = colour[:at] + b"\xff" * 70_000 + colour[at:]
    assert jpeg_scans(filled, 1000) == 10
    assert decode_image(filled, max_pixels=10_000).size == (48, 32)
    # Byte pairs that draw nothing still cost Pillow's Python loop a turn each: the data may not be much
    # longer than the pixels it draws.
    padded = bmp_rle(256, 2)
    padded = padded[:-2] + b"\x00\x02\x00\x00" * 100_000 + padded[-2:]
    with pytest.raises(PayloadTooLargeError, match="run-length BMP of"):
        decode_image(padded, max_pixels=40_000_000)


def test_a_png_of_thousands_of_empty_chunks_is_refused_before_pillow_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pillow reads each chunk in Python: 1.3 million empty ones fit a 16 MB message and cost about 6 s.
    assert decode_image(png_with_chunks(100), max_pixels=10_000).size == (4, 4)
    _never_reached(monkeypatch, PngImagePlugin.PngImageFile, "_open")
    with pytest.raises(PayloadTooLargeError, match="chunks"):
        decode_image(png_with_chunks(MAX_PNG_CHUNKS), max_pixels=10_000)


def test_an_exif_orientation_that_cannot_be_applied_leaves_the_image_as_stored() -> None:
    # A mistyped tag beside the orientation made exif_transpose raise struct.error, which escaped as a
    # model failure (and a fallback chain decoded the file again on every model).
    image = decode_image(png_with_broken_exif(8, 4), max_pixels=10_000)
    assert image.size == (8, 4) and image.getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize(
    "data",
    [b"", b"GIF89a" + b"\x00" * 20, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, solid((1, 2, 3))[:60], b"hello"],
)
def test_corrupt_or_unsupported_images_are_invalid_payloads(data: bytes) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        decode_image(data, max_pixels=10_000)
    assert caught.value.code is ErrorCode.INVALID_PAYLOAD


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF"])
def test_supported_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(encode(Image.new("L", (12, 8), 200), fmt), max_pixels=10_000)
    assert image.mode == "RGB" and image.size == (12, 8)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 10), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue(), max_pixels=10_000).size == (10, 40)


def _color_runtime(models_dir: Path, name: str = "mean_color.onnx") -> OnnxRuntime:
    spec = mean_color_registry(models_dir, name).get("c")
    runtime = OnnxRuntime(spec)
    runtime.load()
    return runtime


@pytest.mark.parametrize("rgb", [(255, 0, 0), (0, 255, 0), (10, 20, 250), (128, 128, 128), (0, 0, 0)])
def test_classification_outputs_are_exactly_the_models(models_dir: Path, rgb: tuple[int, int, int]) -> None:
    runtime = _color_runtime(models_dir)
    pipeline = ImageClassificationPipeline()
    item = pipeline.prepare(solid(rgb), {"top_k": 4}, runtime.spec)
    (out,) = pipeline.run(runtime, [item])
    assert isinstance(out, Classification)
    want = expected_mean_color(rgb)
    assert [lab.index for lab in out.labels] == list(np.argsort(-want, kind="stable"))
    assert [lab.label for lab in out.labels] == [
        MEAN_COLOR_LABELS[i] for i in np.argsort(-want, kind="stable")
    ]
    np.testing.assert_allclose([lab.score for lab in out.labels], np.sort(want)[::-1], atol=1e-6)


def test_a_batch_equals_single_calls_in_order(models_dir: Path) -> None:
    runtime = _color_runtime(models_dir, "mean_color_b4.onnx")
    pipeline = ImageClassificationPipeline()
    rng = np.random.default_rng(3)
    images = [solid(tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(9)]  # type: ignore[misc]
    items = [pipeline.prepare(img, {"top_k": 2}, runtime.spec) for img in images]
    batched = pipeline.run(runtime, items)
    singles = [pipeline.run(runtime, [item])[0] for item in items]
    assert batched == singles


def test_a_batch_ranks_each_item_with_its_own_top_k(models_dir: Path) -> None:
    """One argsort ranks the batch: each item still gets its own k, and a failed slot stays failed."""
    runtime = _color_runtime(models_dir, "mean_color_b4.onnx")
    pipeline = ImageClassificationPipeline()
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (90, 90, 90)]
    items = [
        pipeline.prepare(solid(c), {"top_k": k}, runtime.spec)
        for c, k in zip(colours, (1, 4, 2, 3), strict=True)
    ]
    outputs = pipeline.run(runtime, items)
    assert [len(o.labels) for o in outputs if isinstance(o, Classification)] == [1, 4, 2, 3]
    for out, rgb in zip(outputs, colours, strict=True):
        assert isinstance(out, Classification)
        want = np.argsort(-expected_mean_color(rgb), kind="stable")
        assert [lab.index for lab in out.labels] == list(want[: len(out.labels)])
    failure = ValueError("decoder gave up")
    scores = [np.array([0.1, 0.7, 0.2, 0.0]), failure, np.array([0.5, 0.5, 0.0, 0.0])]
    ranked = ImageClassificationPipeline._top_k(items[:3], scores, dict(enumerate(MEAN_COLOR_LABELS)))
    assert ranked[1] is failure
    assert isinstance(ranked[0], Classification) and [lab.index for lab in ranked[0].labels] == [1]
    assert isinstance(ranked[2], Classification)
    assert [(lab.index, lab.score) for lab in ranked[2].labels] == [(0, 0.5), (1, 0.5)]  # ties: lower index


def test_top_k_param_is_validated(models_dir: Path) -> None:
    runtime = _color_runtime(models_dir)
    pipeline = ImageClassificationPipeline()
    for bad in ({"top_k": 0}, {"top_k": "many"}, {"top_k": True}):
        with pytest.raises(InvalidRequestError) as caught:
            pipeline.prepare(solid((1, 1, 1)), bad, runtime.spec)
        assert caught.value.code is ErrorCode.INVALID_PARAMS


def test_pixel_limit_is_a_pipeline_setting(models_dir: Path) -> None:
    runtime = _color_runtime(models_dir)
    with pytest.raises(PayloadTooLargeError):
        ImageClassificationPipeline(PipelineLimits(max_image_pixels=100)).prepare(
            solid((1, 1, 1), size=11), {}, runtime.spec
        )


def test_the_trained_orientation_classifier_reads_page_rotation(orientation_model: Path) -> None:
    spec = ModelRegistry.from_dict(
        {
            "models": [
                {
                    "id": "o",
                    "task": "vision.classify",
                    "backend": "onnx",
                    "path": str(orientation_model),
                    "params": ORIENTATION_PARAMS,
                }
            ]
        }
    ).get("o")
    runtime = OnnxRuntime(spec)
    runtime.load()
    pipeline = ImageClassificationPipeline()
    degrees = [0, 90, 180, 270, 90, 0]
    items = [
        pipeline.prepare(rotated_page(d, fmt="JPEG" if i % 2 else "PNG"), {"top_k": 4}, spec)
        for i, d in enumerate(degrees)
    ]
    outputs = pipeline.run(runtime, items)
    for deg, out in zip(degrees, outputs, strict=True):
        assert isinstance(out, Classification)
        assert out.labels[0].label == str(deg)
        assert out.labels[0].score > 0.8
        assert abs(sum(lab.score for lab in out.labels) - 1.0) < 1e-4


@pytest.mark.parametrize(
    "recipe",
    [
        {"resize_short": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
         "channel_order": "BGR", "interpolation": "lanczos"},
        {"resize": [32, 24], "layout": "NHWC", "scale": 1.0, "mean": [127.5], "std": [127.5]},
        {"resize": 4},
    ],
)  # fmt: skip
def test_preprocessing_equals_the_textbook_formula(recipe: dict) -> None:  # type: ignore[type-arg]
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    parsed = Recipe.parse(recipe, None)
    got = preprocess(image, parsed)
    # The reference: resize and crop as the recipe says, then (x * scale - mean) / std per channel.
    resized = image
    if "resize_short" in recipe:
        ratio = recipe["resize_short"] / min(image.size)
        resized = image.resize(
            (round(image.width * ratio), round(image.height * ratio)), parsed.resample, reducing_gap=3.0
        )
    elif parsed.resize is not None:
        resized = image.resize(parsed.resize, parsed.resample, reducing_gap=3.0)
    if "crop" in recipe:
        left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
        resized = resized.crop((left, top, left + 224, top + 224))
    x = np.asarray(resized, dtype=np.float64)
    if parsed.bgr:
        x = x[..., ::-1]
    mean = np.asarray(recipe.get("mean", [0.0]), dtype=np.float64)
    std = np.asarray(recipe.get("std", [1.0]), dtype=np.float64)
    want = (x * recipe.get("scale", 1 / 255) - mean) / std
    if parsed.nchw:
        want = want.transpose(2, 0, 1)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(50, 790_000), (1, 40_000_000)])
def test_a_very_narrow_image_resamples_only_its_centre_crop(
    monkeypatch: pytest.MonkeyPatch, size: tuple[int, int]
) -> None:
    # Within the pixel limit, but resized to a 256 short side it would be a billion pixels (5 GB and 17 s
    # of lanczos for the 224 x 224 kept), or too large to resize at all.
    recipe = Recipe.parse({"resize_short": 256, "crop": 224, "interpolation": "lanczos"}, None)
    image = Image.new("RGB", size, (200, 100, 50))
    asked: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def recorded(self: Image.Image, wanted: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        asked.append(wanted)
        return resize(self, wanted, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", recorded)
    out = preprocess(image, recipe)
    assert out.shape == (3, 224, 224)
    assert asked and all(w * h <= 16 * 1024 * 1024 for w, h in asked), asked
    expected = (np.array([200, 100, 50], dtype=np.float32) / 255.0).reshape(3, 1, 1)
    assert np.allclose(out, expected, atol=1 / 255)
