"""``vision.ocr`` with Tesseract: the page text plus every word's box and confidence.

Params (request, else registry ``params``, else default): ``lang`` (``eng``;
several as ``eng+deu`` or a list), ``psm`` (3: Tesseract's page-segmentation
mode; 6 reads one uniform block, 7 a single line). Languages are checked
against the installed packs before Tesseract runs. ``text`` is the words in
reading order: a space between words, a newline between lines, an empty line
between paragraphs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from altlas.models.registry import ModelSpec
from altlas.models.runtime import ModelRuntime
from altlas.models.tesseract import OcrInput, OcrWordBox, TesseractRuntime, installed_languages
from altlas.pipelines.base import Output, PipelineLimits, Prepared
from altlas.pipelines.image import decode_image
from altlas.pipelines.vision_params import layered, layered_int
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import Ocr, OcrWord, ParamValue

_LANG = re.compile(r"^[A-Za-z0-9_]{1,32}$")
#: Modes that produce text (0 is orientation detection only; 2 is not implemented by Tesseract).
PSM_MODES = frozenset({1, *range(3, 14)})


def _bad(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, code=ErrorCode.INVALID_PARAMS)


def language_param(params: Mapping[str, ParamValue], spec: ModelSpec) -> str:
    """``lang`` as Tesseract's ``a+b`` form, each pack checked to be installed."""
    value = layered(params, spec, "lang", "eng")
    if isinstance(value, str):
        langs = [v.strip() for v in value.split("+")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        langs = [v.strip() for v in value]
    else:
        raise _bad("param lang must be a language code like 'eng', 'eng+deu' or a list of codes")
    if not langs or not all(_LANG.match(lang) for lang in langs):
        raise _bad(f"param lang: {value!r} is not a list of Tesseract language codes")
    installed = installed_languages(spec.path)
    missing = [lang for lang in langs if lang not in installed]
    if missing:
        raise _bad(f"param lang: {missing} not installed (available: {', '.join(sorted(installed))})")
    return "+".join(langs)


def page_text(words: Sequence[OcrWordBox]) -> str:
    """Words joined in reading order: spaces within a line, newlines between lines and paragraphs."""
    text: list[str] = []
    previous: tuple[int, int, int, int] | None = None
    for word in words:
        if previous is None:
            pass
        elif word.line == previous:
            text.append(" ")
        elif word.line[:3] == previous[:3]:
            text.append("\n")
        else:
            text.append("\n\n")
        text.append(word.text)
        previous = word.line
    return "".join(text)


class OcrPipeline:
    """``vision.ocr`` on the tesseract backend."""

    task = "vision.ocr"
    decodes_anywhere = True  # prepare() needs only its arguments: a decoder process may run it

    def __init__(self, limits: PipelineLimits | None = None) -> None:
        self.limits = limits or PipelineLimits()

    def prepare(self, payload: bytes | str, params: Mapping[str, ParamValue], spec: ModelSpec) -> Prepared:
        """Validate language and mode, then decode the image."""
        if not isinstance(payload, bytes):
            raise InvalidRequestError("vision payload must be bytes")
        psm = layered_int(params, spec, "psm", 3, lo=0, hi=13)
        if psm not in PSM_MODES:
            raise _bad(f"param psm {psm} yields no text; use 1 or 3..13")
        lang = language_param(params, spec)
        image = decode_image(payload, max_pixels=self.limits.max_image_pixels)
        return Prepared(OcrInput(image, lang, psm), params)

    def run(self, runtime: ModelRuntime, items: Sequence[Prepared]) -> list[Output]:
        """Read a batch (Tesseract processes in parallel); output i answers item i."""
        if not isinstance(runtime, TesseractRuntime):
            error = InvalidRequestError(
                f"backend {runtime.spec.backend!r} cannot do OCR", code=ErrorCode.MODEL_UNAVAILABLE
            )
            return [error for _ in items]
        inputs: list[OcrInput] = [item.data for item in items]
        outputs: list[Output] = []
        for item, words in zip(inputs, runtime.predict_batch(inputs), strict=True):
            if isinstance(words, Exception):
                outputs.append(words)
                continue
            outputs.append(
                Ocr(
                    text=page_text(words),
                    words=[
                        OcrWord(
                            text=w.text,
                            x1=float(w.left),
                            y1=float(w.top),
                            x2=float(w.left + w.width),
                            y2=float(w.top + w.height),
                            confidence=min(max(w.conf / 100.0, 0.0), 1.0),
                        )
                        for w in words
                    ],
                    language=item.lang,
                )
            )
        return outputs
