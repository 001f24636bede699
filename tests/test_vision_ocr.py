"""vision.ocr with the real Tesseract on text rendered with a Debian font."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from altlas.models.runtime import ModelRuntime
from altlas.pipelines.ocr import OcrPipeline
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import Ocr
from tests.fixtures_vision import load_runtime
from tests.vision_builders import encode, text_lines

PIPELINE = OcrPipeline()
LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Kafka carries 1234 requests to altlas every second,",
    "and every answer goes back to the stream in order.",
]


def char_accuracy(got: str, want: str) -> float:
    """1 - Levenshtein distance / length of the expected text."""
    previous = list(range(len(got) + 1))
    for i, w in enumerate(want, 1):
        current = [i]
        for j, g in enumerate(got, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (w != g)))
        previous = current
    return 1 - previous[-1] / len(want)


@pytest.fixture(scope="module")
def tesseract() -> ModelRuntime:
    return load_runtime(
        {"id": "ocr", "task": "vision.ocr", "backend": "tesseract", "params": {"lang": "eng", "workers": 2}}
    )


def ocr(runtime: ModelRuntime, images: list[bytes], params: dict[str, Any] | None = None) -> list[Any]:
    return PIPELINE.run(runtime, [PIPELINE.prepare(img, params or {}, runtime.spec) for img in images])


def test_tesseract_reads_clean_rendered_text(tesseract: ModelRuntime) -> None:
    page = text_lines(LINES)
    (out,) = ocr(tesseract, [encode(page)])
    assert isinstance(out, Ocr)
    assert out.language == "eng"
    assert char_accuracy(out.text, "\n".join(LINES)) >= 0.95, out.text
    assert out.text.count("\n") == 2  # one line of text per rendered line
    words = [w.text for w in out.words]
    assert "quick" in words and "1234" in words and "stream" in words
    for word in out.words:
        assert 0 <= word.x1 < word.x2 <= page.width and 0 <= word.y1 < word.y2 <= page.height
        assert 0.0 <= word.confidence <= 1.0
    assert sum(w.confidence for w in out.words) / len(out.words) > 0.8
    # Words of rendered line i sit in that line's band.
    first, last = out.words[0], out.words[-1]
    assert first.text == "The" and first.y2 < page.height / 3 and last.y1 > page.height * 0.6


def test_a_batch_is_read_in_parallel_and_answers_in_order(tesseract: ModelRuntime) -> None:
    texts = [
        "alpha bravo charlie",
        "delta echo foxtrot",
        "golf hotel india",
        "juliett kilo lima",
        "mike november",
    ]
    images = [encode(text_lines([t]), "JPEG" if i % 2 else "PNG") for i, t in enumerate(texts)]
    batched = ocr(tesseract, images, {"psm": 7})
    assert [o.text for o in batched] == texts
    assert batched == [ocr(tesseract, [img], {"psm": 7})[0] for img in images]


def test_language_may_be_given_as_a_list(tesseract: ModelRuntime) -> None:
    (out,) = ocr(tesseract, [encode(text_lines(["hello world"]))], {"lang": ["eng"], "psm": 7})
    assert out.text == "hello world" and out.language == "eng"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lang": "klingon"}, "not installed"),
        ({"lang": "eng; rm -rf /"}, "not a list"),
        ({"lang": 3}, "language code"),
        ({"psm": 0}, "yields no text"),
        ({"psm": 2}, "yields no text"),
        ({"psm": 14}, "in [0, 13]"),
    ],
)
def test_bad_ocr_params_are_invalid_params(
    tesseract: ModelRuntime, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        PIPELINE.prepare(encode(text_lines(["x"])), params, tesseract.spec)
    assert caught.value.code is ErrorCode.INVALID_PARAMS


def test_tesseract_processes_are_held_to_one_openmp_thread(
    tesseract: ModelRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import pytesseract

    before = os.environ.get("OMP_THREAD_LIMIT")
    seen = tmp_path / "env.txt"
    fake = tmp_path / "tesseract"
    fake.write_text(f'#!/bin/sh\necho "OMP_THREAD_LIMIT=$OMP_THREAD_LIMIT" > {seen}\nexit 3\n')
    fake.chmod(0o755)
    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(fake))
    (out,) = ocr(tesseract, [encode(text_lines(["x"]))])
    assert isinstance(out, Exception) and "tesseract failed" in str(out)  # the fake exits 3
    assert seen.read_text().strip() == "OMP_THREAD_LIMIT=1"
    assert os.environ.get("OMP_THREAD_LIMIT") == before  # torch/onnxruntime here keep their threads
