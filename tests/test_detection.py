"""Task detection for ``task: auto``: by payload kind, params and content, always with a reason."""

from __future__ import annotations

import pytest

from altlas.orchestration.devtools.assets import PipAsset
from altlas.orchestration.routing.task_detection import detect_task, text_likeness
from altlas.schemas.errors import InvalidRequestError
from tests.images import rotated_page, solid

TASKS = {
    "text": ["generate", "chat", "embed", "classify", "tts"],
    "vision": ["classify", "detect", "ocr", "segment"],
    "audio": ["transcribe", "tts", "classify", "diarize"],
}
ALL = {f"{modality}.{task}" for modality, tasks in TASKS.items() for task in tasks}
SKIMAGE = PipAsset("scikit-image", "0.25.2", "skimage/data/astronaut.png")


def test_text_payloads_are_routed_by_shape_and_params() -> None:
    assert detect_task("text", "Write a haiku about Kafka", {}, ALL)[0] == "generate"
    assert detect_task("text", '[{"role": "user", "content": "hi"}]', {}, ALL)[0] == "chat"
    assert detect_task("text", "great product", {"labels": ["pos", "neg"]}, ALL)[0] == "classify"
    assert detect_task("text", "read me aloud", {"voice": "en"}, ALL)[0] == "tts"
    assert detect_task("text", "a sentence", {"embed": True}, ALL)[0] == "embed"
    task, reason = detect_task("text", "[not json", {}, ALL)
    assert task == "generate" and "generation" in reason


def test_a_page_of_text_is_read_and_a_photograph_is_looked_at() -> None:
    page_task, reason = detect_task("vision", rotated_page(90, fmt="JPEG"), {}, ALL)
    assert page_task == "ocr" and "text page" in reason
    photo = SKIMAGE.path().read_bytes()  # a real photograph (NASA, public domain)
    assert text_likeness(photo) < 1.0
    assert detect_task("vision", photo, {}, ALL)[0] == "detect"
    assert detect_task("vision", photo, {}, ALL - {"vision.detect"})[0] == "classify"
    assert detect_task("vision", photo, {"top_k": 3}, ALL)[0] == "classify"
    assert detect_task("vision", solid((1, 2, 3)), {"lang": "eng"}, ALL)[0] == "ocr"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("page.png", 1.0),
        ("text.png", 1.0),
        ("astronaut.png", None),
        ("camera.png", None),
        ("horse.png", None),
        ("coffee.png", None),
    ],
)
def test_text_likeness_separates_pages_from_pictures(name: str, expected: float | None) -> None:
    data = SKIMAGE.path().parent.joinpath(name).read_bytes()
    score = text_likeness(data)
    if expected is None:
        assert score < 1.0, name
    else:
        assert score == expected, name


def test_audio_is_transcribed_unless_params_ask_otherwise() -> None:
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28)
    assert detect_task("audio", wav, {}, ALL)[0] == "transcribe"
    assert detect_task("audio", wav, {"num_speakers": 2}, ALL)[0] == "diarize"
    assert detect_task("audio", b"OggS" + bytes(40), {"top_k": 2}, ALL)[0] == "classify"


def test_a_payload_on_the_wrong_topic_is_refused_with_advice() -> None:
    with pytest.raises(InvalidRequestError, match=r"looks like audio.*audio request topic"):
        detect_task("vision", b"fLaC" + bytes(40), {}, ALL)
    with pytest.raises(InvalidRequestError, match=r"none of .* is served"):
        detect_task("vision", solid((1, 1, 1)), {}, {"text.generate"})
