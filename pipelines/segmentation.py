"""``vision.segment``: instance masks (YOLO-seg) and per-class masks (ONNX semantic models).

- ``ultralytics`` segmentation models give ``instances``: class, score, box,
  outer polygons and a run-length mask per object, at the original image size.
  Params as for detect: ``conf``, ``iou``, ``max_det``, ``classes``, ``imgsz``.
- ``onnx`` semantic-segmentation models give ``class_masks``: one mask per class
  present. The model's first output is a score map ``(C, h, w)``: with C > 1 each
  pixel takes its best class; with C = 1 (a foreground probability, e.g. a DBNet
  text detector) a pixel is in when its score exceeds ``threshold`` (0.5).
  ``params.output: logits`` applies a sigmoid first; ``params.background_class``
  leaves that class out; ``params.preprocess`` is the classifier's recipe.
Masks are RleMask (see pipelines/masks.py), always at the original image size.
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
from altlas.models.yolo import UltralyticsRuntime, YoloOutput
from altlas.pipelines.base import Output, PipelineLimits, Prepared, model_param
from altlas.pipelines.detection import (
    DetectItem,
    backend_pixels,
    boxes_record,
    detect_settings,
    labels_of,
    yolo_input,
)
from altlas.pipelines.masks import encode_rle, mask_polygons
from altlas.pipelines.vision_params import (
    float_param,
    resolve_classes,
)
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import ClassMask, ParamValue, Segmentation, SegmentInstance


@dataclass(frozen=True)
class SegmentItem:
    """A decoded image for its backend, plus the request's settings."""

    detect: DetectItem
    threshold: float


def score_map_to_labels(
    scores: np.ndarray, size: tuple[int, int], *, threshold: float, logits: bool
) -> tuple[np.ndarray, int]:
    """Per-pixel class ids at ``size`` (w, h) from a (C, h, w) map; -1 where no class (C = 1 only)."""
    if scores.ndim == 2:
        scores = scores[None]
    if scores.ndim != 3:
        raise ValueError(f"a segmentation output is (C, h, w), got {scores.shape}")
    classes = scores.shape[0]
    if classes == 1:
        # Resize the probabilities, not the decision, so edges follow the model's own gradient.
        plane = scores[0].astype(np.float32)
        if logits:
            plane = 1.0 / (1.0 + np.exp(-plane))
        resized = np.asarray(Image.fromarray(plane).resize(size, Image.Resampling.BILINEAR))
        return np.where(resized > threshold, 0, -1).astype(np.int32), 1
    best = np.argmax(scores, axis=0).astype(np.int32)
    resized = np.asarray(Image.fromarray(best).resize(size, Image.Resampling.NEAREST))
    return resized.astype(np.int32), classes


class SegmentationPipeline:
    """``vision.segment`` over the ultralytics (instances) and onnx (semantic) backends."""

    task = "vision.segment"
    decodes_anywhere = True  # prepare() needs only its arguments: a decoder process may run it

    def __init__(self, limits: PipelineLimits | None = None) -> None:
        self.limits = limits or PipelineLimits()

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Validate params, decode the image and shape it for the model's backend."""
        if not isinstance(payload, bytes):
            raise InvalidRequestError("vision payload must be bytes")
        settings = detect_settings(params, spec)
        threshold = float_param(params, spec, "threshold", 0.5, lo=0.0, hi=1.0)
        pixels, width, height = backend_pixels(payload, spec, self.limits)
        return Prepared(SegmentItem(DetectItem(pixels, width, height, *settings), threshold), params)

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Segment a batch; output i answers item i."""
        names = labels_of(runtime)
        seg_items: list[SegmentItem] = [item.data for item in items]
        outputs: list[Output] = [InvalidRequestError("unset")] * len(items)
        todo: list[tuple[int, Any]] = []
        for i, item in enumerate(seg_items):
            try:
                todo.append((i, self._model_input(runtime, item.detect, names)))
            except InvalidRequestError as exc:
                outputs[i] = exc
        raw = runtime.predict_batch([x for _, x in todo]) if todo else []
        for (i, _), out in zip(todo, raw, strict=True):
            if isinstance(out, Exception):
                outputs[i] = out
            elif isinstance(out, YoloOutput):
                outputs[i] = self._instances(out, seg_items[i].detect, names)
            else:
                try:
                    outputs[i] = self._semantic(runtime.spec, out, seg_items[i], names)
                except InvalidRequestError as exc:  # a class the model does not have
                    outputs[i] = exc
        return outputs

    @staticmethod
    def _model_input(runtime: ModelRuntime, item: DetectItem, names: Mapping[int, str]) -> Any:
        if isinstance(runtime, UltralyticsRuntime):
            return yolo_input(item, names)
        if isinstance(runtime, OnnxRuntime):
            return {runtime.input_names[0]: item.pixels}
        raise InvalidRequestError(
            f"backend {runtime.spec.backend!r} cannot segment", code=ErrorCode.MODEL_UNAVAILABLE
        )

    @staticmethod
    def _instances(out: YoloOutput, item: DetectItem, names: Mapping[int, str]) -> Segmentation:
        boxes = boxes_record(out.boxes, out.scores, out.class_ids, names, item).boxes
        masks = out.masks if out.masks is not None else np.zeros((0, item.height, item.width), bool)
        instances = [
            SegmentInstance(
                class_id=box.class_id,
                class_name=box.class_name,
                score=box.score,
                box=box,
                polygons=mask_polygons(mask),
                mask=encode_rle(mask),
            )
            for box, mask in zip(boxes, masks, strict=True)
        ]
        return Segmentation(instances=instances, image_width=item.width, image_height=item.height)

    @staticmethod
    def _semantic(spec: ModelSpec, out: Any, item: SegmentItem, names: Mapping[int, str]) -> Segmentation:
        scores = np.asarray(next(iter(out.values())) if isinstance(out, dict) else out)
        size = (item.detect.width, item.detect.height)
        logits = str(model_param(spec, "output", "probabilities")) == "logits"
        labels, classes = score_map_to_labels(scores, size, threshold=item.threshold, logits=logits)
        background = model_param(spec, "background_class")
        known = dict(names) or {cid: str(cid) for cid in range(classes)}
        wanted = resolve_classes(item.detect.classes, known)
        masks = []
        for cid in range(classes):
            if cid == background or (wanted is not None and cid not in wanted):
                continue
            mask = labels == cid
            if mask.any():
                name = known.get(cid, str(cid))
                masks.append(ClassMask(class_id=cid, class_name=name, mask=encode_rle(mask)))
        return Segmentation(class_masks=masks, image_width=size[0], image_height=size[1])
