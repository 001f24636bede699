"""Task detection for requests that say ``task: auto`` and name no model.

First the payload's kind (image magic bytes, audio containers, otherwise text)
must match the topic it came on; then, within the modality, the params and the
content decide. Every decision carries a human-readable reason, which goes into
the result so callers can see why altlas did what it did.
"""

from __future__ import annotations

import io
import json
from collections.abc import Collection, Mapping

import numpy as np
from PIL import Image, ImageFilter

from altlas.orchestration.execution.sniff import sniff
from altlas.pipelines.image import FORMATS
from altlas.pipelines.image_costs import after_open, before_open
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import ParamValue


def detect_task(
    modality: str, payload: bytes | str, params: Mapping[str, ParamValue], available: Collection[str]
) -> tuple[str, str]:
    """(task, reason) for an ``auto`` request; ``available`` are the tasks this instance can serve."""
    kind = _payload_modality(payload)
    if modality == "text" and isinstance(payload, str):
        kind = "text"  # a text topic carries strings; sniffing applies to bytes payloads
    if kind != modality:
        raise InvalidRequestError(
            f"task auto: the payload looks like {kind}, but it came on the {modality} topic; "
            f"send it to the {kind} request topic",
            code=ErrorCode.UNKNOWN_TASK,
        )
    candidates = _ranked(modality, payload, params)
    for task, reason in candidates:
        if f"{modality}.{task}" in available:
            return task, reason
    wanted = ", ".join(t for t, _ in candidates)
    raise InvalidRequestError(f"task auto: none of {wanted} is served here", code=ErrorCode.UNKNOWN_TASK)


def _payload_modality(payload: bytes | str) -> str:
    if isinstance(payload, str):
        return "text"
    mime = sniff(payload)
    if mime is None:
        return "text"
    return "vision" if mime.startswith("image/") else "audio"


def _ranked(modality: str, payload: bytes | str, params: Mapping[str, ParamValue]) -> list[tuple[str, str]]:
    """Plausible tasks, most likely first, each with the reason it was picked."""
    if modality == "text":
        return _text(payload if isinstance(payload, str) else payload.decode("utf-8", "replace"), params)
    if modality == "vision":
        assert isinstance(payload, bytes)
        return _vision(payload, params)
    return _audio(params)


def _text(text: str, params: Mapping[str, ParamValue]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if "voice" in params or "speed" in params:
        out.append(("tts", "voice/speed params ask for speech"))
    if "labels" in params or "top_k" in params:
        out.append(("classify", "labels/top_k params ask for classification"))
    if params.get("embed") is True or "dimensions" in params:
        out.append(("embed", "embed param asks for a vector"))
    if _is_chat(text):
        out.append(("chat", "the payload is a JSON list of {role, content} messages"))
    out.append(("generate", "plain text with no task-specific params: text generation"))
    return out


def _is_chat(text: str) -> bool:
    stripped = text.lstrip()
    if not stripped.startswith("["):
        return False
    try:
        doc = json.loads(stripped)
    except ValueError:
        return False
    return isinstance(doc, list) and bool(doc) and all(isinstance(m, dict) and "role" in m for m in doc)


def _vision(data: bytes, params: Mapping[str, ParamValue]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if params.get("text") is True or "lang" in params or "psm" in params:
        out.append(("ocr", "text/lang/psm params ask for OCR"))
    if "masks" in params or params.get("segment") is True:
        out.append(("segment", "masks param asks for segmentation"))
    if any(k in params for k in ("classes", "conf", "iou", "max_det")):
        out.append(("detect", "classes/conf/iou params ask for detection"))
    if "top_k" in params:
        out.append(("classify", "top_k param asks for classification"))
    share = text_likeness(data)
    if share == 1.0:
        out.append(("ocr", f"the image looks like a text page (text-likeness {share:.2f})"))
    out.append(("detect", f"a picture (text-likeness {share:.2f}): object detection"))
    out.append(("classify", "no detection model here: classification"))
    return out


def _audio(params: Mapping[str, ParamValue]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if any(k in params for k in ("num_speakers", "min_speakers", "max_speakers")):
        out.append(("diarize", "speaker-count params ask for diarization"))
    if "top_k" in params or "labels" in params:
        out.append(("classify", "top_k/labels params ask for audio classification"))
    out.append(("transcribe", "speech in an audio container: transcription"))
    out.append(("classify", "no transcription model here: audio classification"))
    return out


#: Largest image task detection looks at: JPEG (decoded straight to a thumbnail) and the
#: formats decoded whole first. Larger ones are not taken for text pages; the request's own
#: limit still applies when its model decodes it.
DETECTION_MAX_PIXELS = 16_000_000
DETECTION_MAX_PIXELS_FULL_DECODE = 4_000_000


def text_likeness(data: bytes, size: int = 384) -> float:
    """0..1: the share of the marks of a printed page this image has (1.0: all of them).

    After dividing out the (possibly uneven) paper brightness, a page is mostly
    paper, a few percent ink and almost no mid-tones, and its ink comes in thin
    strokes (most ink pixels touch paper), unlike a silhouette or a photo.
    Only a thumbnail is decoded, so it is cheap enough for every auto image.
    """
    try:
        before_open(data)  # a file too costly to open or decode is not looked at (its decode refuses it)
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            width, height = img.size
            limit = DETECTION_MAX_PIXELS if img.format == "JPEG" else DETECTION_MAX_PIXELS_FULL_DECODE
            if width * height > limit:  # only JPEG decodes a thumbnail directly; others decode whole
                return 0.0
            after_open(data, img, limit)
            img.draft("L", (size, size))
            gray = img.convert("L")
            gray.thumbnail((size, size))
            background = gray.filter(ImageFilter.MaxFilter(9)).filter(ImageFilter.BoxBlur(10))
    except Exception:
        return 0.0
    g = np.asarray(gray, dtype=np.float32) / 255 + 0.02
    bg = np.asarray(background, dtype=np.float32) / 255 + 0.02
    norm = g / bg
    ink = norm < 0.6
    paper_share, ink_share = float((norm > 0.85).mean()), float(ink.mean())
    mid_share = 1.0 - paper_share - ink_share
    inner = ink[1:-1, 1:-1] & ink[:-2, 1:-1] & ink[2:, 1:-1] & ink[1:-1, :-2] & ink[1:-1, 2:]
    stroke_share = 1.0 - float(inner.sum()) / max(1, int(ink.sum()))
    marks = [paper_share >= 0.7, 0.03 <= ink_share <= 0.35, mid_share <= 0.2, stroke_share >= 0.5]
    return sum(marks) / len(marks)
