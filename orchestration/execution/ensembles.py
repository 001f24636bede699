"""Combining the outputs of several models for one request.

Each output type has the aggregation that makes sense for it: votes or
averaged scores for labels, fused boxes for detections, the most confident
answer for OCR and transcription, and a configurable rule for generated text.
Members that failed or missed the deadline are simply absent here.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import (
    AudioClassification,
    Box,
    Classification,
    Detection,
    Embedding,
    Label,
    Ocr,
    ParamValue,
    Record,
    TextGeneration,
    Transcription,
)


def aggregate(outputs: Sequence[Record], params: Mapping[str, ParamValue]) -> Record:
    """One output from the members' outputs (all of the same type, at least one)."""
    first = outputs[0]
    if len(outputs) == 1:
        return first
    if isinstance(first, Classification):
        labels = _labels([o.labels for o in outputs if isinstance(o, Classification)], params)
        return Classification(labels=labels)
    if isinstance(first, AudioClassification):
        members = [o for o in outputs if isinstance(o, AudioClassification)]
        return AudioClassification(
            labels=_labels([m.labels for m in members], params), segments=first.segments
        )
    if isinstance(first, Detection):
        return fuse_boxes([o for o in outputs if isinstance(o, Detection)], params)
    if isinstance(first, Ocr):
        return max((o for o in outputs if isinstance(o, Ocr)), key=_ocr_confidence)
    if isinstance(first, Transcription):
        return max((o for o in outputs if isinstance(o, Transcription)), key=_transcript_confidence)
    if isinstance(first, TextGeneration):
        return _pick_text([o for o in outputs if isinstance(o, TextGeneration)], params)
    if isinstance(first, Embedding):
        mean = np.mean(
            [np.asarray(o.vector, dtype=np.float64) for o in outputs if isinstance(o, Embedding)], axis=0
        )
        norm = float(np.linalg.norm(mean)) or 1.0
        return Embedding(
            vector=[float(v) for v in mean / norm], dim=first.dim, prompt_tokens=first.prompt_tokens
        )
    return first  # segmentation, speech, diarization: the first finished answer


def _labels(member_labels: Sequence[Sequence[Label]], params: Mapping[str, ParamValue]) -> list[Label]:
    """``aggregate=mean`` (default): average every label's score; ``majority``: vote on the top label."""
    rule = str(params.get("aggregate", "mean"))
    k = max(len(labels) for labels in member_labels)
    totals: dict[tuple[int, str], float] = defaultdict(float)
    for labels in member_labels:
        for lab in labels:
            totals[(lab.index, lab.label)] += lab.score / len(member_labels)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0][0]))
    if rule == "majority":
        votes = Counter((labels[0].index, labels[0].label) for labels in member_labels if labels)
        # Most votes first; ties and the rest ordered by averaged score.
        ranked = sorted(totals.items(), key=lambda kv: (-votes.get(kv[0], 0), -kv[1], kv[0][0]))
    elif rule != "mean":
        raise InvalidRequestError(
            f"aggregate must be mean or majority, got {rule!r}", code=ErrorCode.INVALID_PARAMS
        )
    return [Label(index=i, label=name, score=score) for (i, name), score in ranked[:k]]


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def fuse_boxes(members: Sequence[Detection], params: Mapping[str, ParamValue]) -> Detection:
    """Weighted-box-fusion style: cluster same-class boxes across members by IoU, average them.

    A fused box's score is the sum of its cluster's scores over the number of
    members, so a box only one model of three saw is down-weighted to a third.
    """
    threshold = float(params.get("fusion_iou", 0.55))  # type: ignore[arg-type]
    min_votes = int(params.get("min_votes", 1))  # type: ignore[arg-type]
    clusters: list[list[Box]] = []
    for member in members:
        for box in sorted(member.boxes, key=lambda b: -b.score):
            best, best_iou = None, threshold
            for cluster in clusters:
                if cluster[0].class_id != box.class_id:
                    continue
                overlap = iou(_mean_box(cluster), box)
                if overlap >= best_iou:
                    best, best_iou = cluster, overlap
            if best is None:
                clusters.append([box])
            else:
                best.append(box)
    fused = []
    for cluster in clusters:
        if len(cluster) < min_votes:
            continue
        box = _mean_box(cluster)
        fused.append(box.model_copy(update={"score": sum(b.score for b in cluster) / len(members)}))
    fused.sort(key=lambda b: -b.score)
    return Detection(boxes=fused, image_width=members[0].image_width, image_height=members[0].image_height)


def _mean_box(cluster: Sequence[Box]) -> Box:
    weights = np.array([b.score for b in cluster], dtype=np.float64)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(cluster), 1 / len(cluster))
    coords = np.array([[b.x1, b.y1, b.x2, b.y2] for b in cluster], dtype=np.float64)
    x1, y1, x2, y2 = (weights[:, None] * coords).sum(axis=0)
    return Box(
        x1=float(x1),
        y1=float(y1),
        x2=float(x2),
        y2=float(y2),
        class_id=cluster[0].class_id,
        class_name=cluster[0].class_name,
        score=float(np.mean([b.score for b in cluster])),
    )


def _ocr_confidence(ocr: Ocr) -> float:
    return float(np.mean([w.confidence for w in ocr.words])) if ocr.words else 0.0


def _transcript_confidence(t: Transcription) -> float:
    return float(np.mean([w.probability for w in t.words])) if t.words else t.language_probability


_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """Case, punctuation and spacing folded, for comparing generated answers."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def _pick_text(members: Sequence[TextGeneration], params: Mapping[str, ParamValue]) -> TextGeneration:
    rule = str(params.get("aggregate", "majority"))
    if rule == "first":
        return members[0]
    if rule == "longest":
        return max(members, key=lambda m: len(m.text))
    if rule == "majority":
        counts = Counter(normalise(m.text) for m in members)
        winner = max(counts, key=lambda answer: counts[answer])  # ties: first seen (Counter keeps order)
        return next(m for m in members if normalise(m.text) == winner)
    raise InvalidRequestError(
        f"aggregate must be first, longest or majority, got {rule!r}", code=ErrorCode.INVALID_PARAMS
    )
