"""Image classification on ONNX Runtime or ultralytics: resize, crop, normalise, top-k.

Preprocessing is data in the registry entry (``params.preprocess``), because
every classifier was trained with its own recipe and getting it wrong silently
degrades accuracy. Labels come from the registry, or from a key of the ONNX
file's metadata where the model carries them. An ultralytics classifier
(``backend: ultralytics``, YOLO-cls) brings its own preprocessing and class
names; ``params.imgsz`` sets its input size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from altlas.models.onnx import OnnxRuntime
from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.models.yolo import UltralyticsRuntime, YoloInput
from altlas.pipelines.base import Output, PipelineLimits, Prepared, int_param, model_param
from altlas.pipelines.image import decode_image
from altlas.pipelines.scores import class_labels, softmax
from altlas.schemas.errors import InvalidRequestError
from altlas.schemas.types import Classification, ParamValue

#: Above this many pixels the resize for a centre crop resamples only the crop (``_only_crop_kept``).
_MAX_RESIZED_PIXELS = 16 * 1024 * 1024

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _size(value: Any) -> tuple[int, int] | None:
    """``224`` or ``[w, h]`` -> (w, h)."""
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    w, h = value
    return int(w), int(h)


@dataclass(frozen=True)
class Recipe:
    """A registry ``preprocess`` recipe, parsed once per model instead of once per image."""

    resample: Image.Resampling
    resize_short: int | None
    resize: tuple[int, int] | None
    crop: tuple[int, int] | None
    bgr: bool
    nchw: bool
    #: ``(x * scale - mean) / std`` folded into ``x * gain - offset``, per channel.
    gain: np.ndarray
    offset: np.ndarray

    @classmethod
    def parse(cls, recipe: Mapping[str, Any], model_hw: tuple[int, int] | None) -> Recipe:
        """From the registry's mapping; ``model_hw`` (h, w) is the fallback resize target."""
        size = _size(recipe.get("resize"))
        scale = np.float32(recipe.get("scale", 1.0 / 255.0))
        mean = np.asarray(recipe.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32)
        std = np.asarray(recipe.get("std", [1.0, 1.0, 1.0]), dtype=np.float32)
        return cls(
            resample=_RESAMPLE[str(recipe.get("interpolation", "bilinear"))],
            resize_short=int(recipe["resize_short"]) if "resize_short" in recipe else None,
            resize=size or ((model_hw[1], model_hw[0]) if model_hw else None),
            crop=_size(recipe.get("crop")),
            bgr=str(recipe.get("channel_order", "RGB")).upper() == "BGR",
            nchw=str(recipe.get("layout", "NCHW")).upper() == "NCHW",
            gain=(scale / std).astype(np.float32),
            offset=(mean / std).astype(np.float32),
        )


def preprocess(image: Image.Image, recipe: Recipe) -> np.ndarray:
    """Apply a recipe to an RGB image; returns CHW (or HWC) float32."""
    if recipe.resize_short is not None:
        w, h = image.size
        ratio = recipe.resize_short / min(w, h)
        # reducing_gap: shrink by an integer factor first, then resample: several times faster on
        # large images and, at a gap of 3, indistinguishable from a full resample (Pillow's docs).
        target = (max(1, round(w * ratio)), max(1, round(h * ratio)))
        if recipe.crop is not None and _only_crop_kept(target, recipe.crop):
            image = _resized_crop(image, target, recipe.crop, recipe.resample)
        elif target != image.size:
            image = image.resize(target, recipe.resample, reducing_gap=3.0)
    elif recipe.resize is not None and recipe.resize != image.size:
        image = image.resize(recipe.resize, recipe.resample, reducing_gap=3.0)
    if recipe.crop is not None:
        cw, ch = recipe.crop
        w, h = image.size
        if w < cw or h < ch:
            image = image.resize((max(w, cw), max(h, ch)), recipe.resample)
            w, h = image.size
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
    # Reorder the uint8 pixels as views, then write the float tensor once in its final layout:
    # two passes over the output instead of five (convert, scale, centre, divide, copy), which
    # is a fifth of the CPU an image costs before the model on a 224 px classifier.
    pixels = np.asarray(image)
    if recipe.bgr:
        pixels = pixels[..., ::-1]
    gain, offset = recipe.gain, recipe.offset
    if recipe.nchw:
        pixels = pixels.transpose(2, 0, 1)
        gain, offset = gain.reshape(-1, 1, 1), offset.reshape(-1, 1, 1)
    out = np.empty(pixels.shape, dtype=np.float32)
    np.multiply(pixels, gain, out=out)
    np.subtract(out, offset, out=out)
    return out


def _only_crop_kept(target: tuple[int, int], crop: tuple[int, int]) -> bool:
    """Whether to resample only the centre crop: when the whole resized image would be huge.

    A 50 x 790,000 image is within the pixel limit, but with its short side
    resized to 256 it is a billion pixels (17 s and 5 GB, of which 224 x 224
    are kept). Ordinary images keep the plain resize, whose pixels the models
    were checked against.
    """
    return target[0] * target[1] > _MAX_RESIZED_PIXELS and target[0] >= crop[0] and target[1] >= crop[1]


def _resized_crop(
    image: Image.Image, target: tuple[int, int], crop: tuple[int, int], resample: Image.Resampling
) -> Image.Image:
    """The centre ``crop`` of ``image`` resized to ``target``, resampling only the source region it
    covers: the output grid is the one the whole resize would have had."""
    w, h = image.size
    sx, sy = target[0] / w, target[1] / h
    left, top = (target[0] - crop[0]) // 2, (target[1] - crop[1]) // 2
    box = (left / sx, top / sy, (left + crop[0]) / sx, (top + crop[1]) / sy)
    return image.resize(crop, resample, box=box, reducing_gap=3.0)


class ImageClassificationPipeline:
    """``vision.classify`` on an ONNX classifier."""

    task = "vision.classify"
    decodes_anywhere = True  # prepare() needs only its arguments: a decoder process may run it

    def __init__(self, limits: PipelineLimits | None = None) -> None:
        self.limits = limits or PipelineLimits()
        self._recipes: dict[str, Recipe] = {}

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Decode and preprocess one image to the model's input tensor."""
        if not isinstance(payload, bytes):
            raise InvalidRequestError("vision payload must be bytes")
        int_param(params, "top_k", 5, lo=1, hi=1000)
        image = decode_image(payload, max_pixels=self.limits.max_image_pixels)
        if spec.backend == "ultralytics":  # ultralytics resizes and normalises itself, from BGR pixels
            return Prepared(np.ascontiguousarray(np.asarray(image)[..., ::-1]), params)
        return Prepared(preprocess(image, self._recipe(spec)), params)

    def _recipe(self, spec: ModelSpec) -> Recipe:
        recipe = self._recipes.get(spec.key)
        if recipe is None:
            model_hw = _size(model_param(spec, "input_size"))
            recipe = Recipe.parse(
                dict(model_param(spec, "preprocess", {}) or {}),
                (model_hw[1], model_hw[0]) if model_hw else None,
            )
            self._recipes[spec.key] = recipe
        return recipe

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Classify a batch; output i answers item i."""
        spec = runtime.spec
        if isinstance(runtime, UltralyticsRuntime):
            raw = runtime.predict_batch([YoloInput(item.data) for item in items])
            return self._top_k(
                items, [o if isinstance(o, Exception) else o.probs for o in raw], runtime.names
            )
        input_name = model_param(spec, "input_name")
        if input_name is None and isinstance(runtime, OnnxRuntime):
            input_name = runtime.input_names[0]
        raw = runtime.predict_batch([{input_name: item.data} for item in items])
        apply_softmax = str(model_param(spec, "output", "probabilities")) == "logits"
        scores: list[Any] = []
        for out in raw:
            if isinstance(out, Exception):
                scores.append(out)
                continue
            values = np.asarray(next(iter(out.values())) if isinstance(out, dict) else out, dtype=np.float32)
            scores.append(softmax(values.reshape(-1)) if apply_softmax else values.reshape(-1))
        return self._top_k(items, scores, dict(enumerate(class_labels(runtime))))

    @staticmethod
    def _top_k(
        items: Sequence[Prepared], all_scores: Sequence[Any], labels: Mapping[int, str]
    ) -> list[Output]:
        """Best-first labels per item; an exception in a slot stays that item's answer.

        The batch is ranked with one argsort over a stacked score matrix: per-item
        numpy calls on a handful of scores cost more than the ranking itself, and
        for small classifiers this step weighed more than the model call.
        """
        outputs: list[Output] = list(all_scores)
        rows = [i for i, s in enumerate(all_scores) if not isinstance(s, Exception)]
        if not rows:
            return outputs
        vectors = [np.asarray(all_scores[i], dtype=np.float32).reshape(-1) for i in rows]
        if len({v.size for v in vectors}) > 1:  # never within one model; ranked one by one
            for i, v in zip(rows, vectors, strict=True):
                outputs[i] = _ranked([v], [_k(items[i], v.size)], labels)[0]
            return outputs
        wanted = [_k(items[i], vectors[0].size) for i in rows]
        for i, answer in zip(rows, _ranked(vectors, wanted, labels), strict=True):
            outputs[i] = answer
        return outputs


def _k(item: Prepared, classes: int) -> int:
    return min(int_param(item.params, "top_k", 5, lo=1, hi=1000), classes)


def _ranked(vectors: Sequence[np.ndarray], wanted: Sequence[int], labels: Mapping[int, str]) -> list[Output]:
    """Top-``wanted[i]`` labels of each equally long score vector, best first (ties: lower index)."""
    scores = np.stack(vectors)
    order = np.argsort(-scores, axis=1, kind="stable")[:, : max(wanted)]
    top = order.tolist()
    values = np.take_along_axis(scores, order, axis=1).tolist()
    # One validation of plain dicts (pydantic's Rust core) is several times cheaper than
    # building each Label in Python.
    return [
        Classification.model_validate(
            {
                "labels": [
                    {"index": i, "label": labels.get(i, str(i)), "score": v}
                    for i, v in zip(t[:k], vs[:k], strict=True)
                ]
            }
        )
        for t, vs, k in zip(top, values, wanted, strict=True)
    ]
