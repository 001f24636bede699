"""Answers are built as raw Avro datums for speed; they must match the pydantic mirror byte for byte."""

from __future__ import annotations

from altlas.consumers.records import InboundRecord
from altlas.models.registry import ModelRegistry, ModelSpec
from altlas.orchestration.app.settings import TopicSettings
from altlas.orchestration.clients.client import make_request
from altlas.orchestration.execution.multi_model import Member
from altlas.orchestration.observability.tracing import Tracing
from altlas.orchestration.serving.answers import Answers, ReplayOutput
from altlas.orchestration.serving.salvage import Salvage
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import Classification, DeadLetter, ErrorInfo, Label, ResultStatus, VisionResult


def _answers(codec: AvroCodec, replay: ReplayOutput | None = None) -> Answers:
    return Answers(
        "vision",
        codec=codec,
        topics=TopicSettings(),
        tracing=Tracing(None),
        instance_id="i",
        group_id="g",
        max_message_bytes=2**20,
        replay=replay,
    )


def _spec() -> ModelSpec:
    registry = ModelRegistry.from_dict(
        {"models": [{"id": "m", "task": "vision.classify", "backend": "onnx"}]}
    )
    return registry.get("m")


def test_result_datums_round_trip_through_the_pydantic_mirror_unchanged() -> None:
    codec = AvroCodec()
    answers = _answers(codec)
    spec = _spec()
    request = make_request("vision", "classify", b"x", model="m", metadata={"tenant": "t"})
    rec = InboundRecord("ai.requests.vision", 2, 41, b"k", b"v", (), 0)
    output = Classification(
        labels=[Label(index=1, label="cat", score=0.75), Label(index=0, label="dog", score=0.25)]
    )
    members = [
        Member(spec, output, None),
        Member(spec, InvalidRequestError("bad", code=ErrorCode.INVALID_PARAMS), None),
    ]
    outcome = answers.result(
        rec,
        request,
        spec,
        output,
        None,
        None,
        status=ResultStatus.PARTIAL,
        attributes={"a": "b"},
        members=members,
    )
    value = outcome.messages[0].value
    result = codec.decode_record(value, VisionResult)
    assert codec.encode_record(result) == value
    assert (
        result.output == output
        and result.status is ResultStatus.PARTIAL
        and result.metadata == {"tenant": "t"}
    )
    assert [m.status for m in result.members] == [ResultStatus.OK, ResultStatus.ERROR]
    assert result.members[1].error is not None and result.members[1].error.code == "INVALID_PARAMS"
    assert outcome.result is not None and outcome.result.status is ResultStatus.PARTIAL
    headers = dict(outcome.messages[0].headers)
    assert headers["altlas.source.partition"] == b"2" and headers["altlas.source.offset"] == b"41"
    assert (
        headers["altlas.model.id"] == b"m" and headers["altlas.model.config"] == spec.config_hash().encode()
    )
    assert "altlas.replay" not in headers


def test_a_failed_request_gets_an_error_result_on_its_reply_topic_and_a_dead_letter() -> None:
    codec = AvroCodec()
    answers = _answers(codec)
    request = make_request("vision", "classify", b"x", request_id="r-1")
    rec = InboundRecord("ai.requests.vision", 0, 7, b"k", b"v", (), 0)
    outcome = answers.failure(rec, InvalidRequestError("bad", code=ErrorCode.INVALID_PARAMS), request)
    result, letter = outcome.messages
    assert result.topic == TopicSettings().results("vision") and result.key == b"r-1"
    assert letter.topic == TopicSettings().dead_letter and outcome.dead_letter
    assert outcome.error is not None and outcome.error.code == "INVALID_PARAMS"


def test_a_dead_letter_without_its_value_drops_large_headers_too() -> None:
    # The request's headers may be what made every answer too large; the last-resort dead letter must fit.
    codec = AvroCodec()
    answers = _answers(codec)
    info = ErrorInfo(code="PAYLOAD_TOO_LARGE", message="too large")
    small = (("traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"),)
    empty = tuple(("", b"") for _ in range(10_000))  # nothing in them, but each costs its framing
    for headers, kept in ((small, small), ((("tracestate", b"x" * 200_000),), ()), (empty, ())):
        rec = InboundRecord("ai.requests.vision", 0, 7, b"k", b"v" * 1000, headers, 0)
        letter = codec.decode_record(
            answers.dead_letter(rec, info, "E", "r", with_value=False).value, DeadLetter
        )
        assert letter.value is None and tuple((h.key, h.value) for h in letter.headers) == kept
        assert letter.error_message.endswith("headers omitted: too large)") is (not kept)
    full = codec.decode_record(answers.dead_letter(rec, info, "E", "r").value, DeadLetter)
    assert full.value == b"v" * 1000 and len(full.headers) == len(empty)  # the whole record when it fits


def test_replay_answers_go_to_its_topic_marked_and_without_dead_letters() -> None:
    codec = AvroCodec()
    answers = _answers(codec, ReplayOutput(topic="replayed", replay_id="rp-9"))
    request = make_request("vision", "classify", b"x", reply_topic="ai.results.vision.mine")
    rec = InboundRecord("ai.requests.vision", 0, 3, b"k", b"v", (), 0)
    outcome = answers.failure(rec, InvalidRequestError("bad", code=ErrorCode.INVALID_PARAMS), request)
    assert [m.topic for m in outcome.messages] == ["replayed"]
    assert dict(outcome.messages[0].headers)["altlas.replay"] == b"rp-9"
    assert not outcome.dead_letter
    assert answers.forced_topic == "replayed" and answers.reply_topic(None) == "replayed"


def test_salvage_reads_the_request_id_and_reply_topic_of_a_record_that_failed_intake() -> None:
    codec = AvroCodec()
    request = make_request(
        "vision",
        "classify",
        b"x",
        request_id="r-2",
        reply_topic="ai.results.vision.mine",
        metadata={"a": "b"},
    )
    value = codec.encode_record(request)
    rec = InboundRecord("ai.requests.vision", 0, 1, b"k", value, (), 0)
    salvage = Salvage.of_record(rec, codec, max_bytes=2**20)
    assert salvage == Salvage("r-2", "classify", "ai.results.vision.mine", {"a": "b"})
    assert Salvage.of_record(rec, codec, max_bytes=len(value) - 1) is None  # refused for its size
    junk = InboundRecord("ai.requests.vision", 0, 2, b"k", b"junk", (), 0)
    assert Salvage.of_record(junk, codec, max_bytes=2**20) is None
