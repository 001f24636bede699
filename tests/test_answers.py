"""Answers are built as raw Avro datums for speed; they must match the pydantic mirror byte for byte."""

from __future__ import annotations

from altlas.consumers.records import InboundRecord
from altlas.models.registry import ModelRegistry
from altlas.orchestration.app.settings import TopicSettings
from altlas.orchestration.clients.client import make_request
from altlas.orchestration.observability.tracing import Tracing
from altlas.orchestration.serving.answers import Answers, MemberAnswer
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import Classification, Label, ResultStatus, VisionResult


def test_result_datums_round_trip_through_the_pydantic_mirror_unchanged() -> None:
    codec = AvroCodec()
    answers = Answers(
        "vision",
        codec=codec,
        topics=TopicSettings(),
        tracing=Tracing(None),
        instance_id="i",
        group_id="g",
        max_message_bytes=2**20,
    )
    spec = ModelRegistry.from_dict(
        {"models": [{"id": "m", "task": "vision.classify", "backend": "onnx"}]}
    ).get("m")
    request = make_request("vision", "classify", b"x", model="m", metadata={"tenant": "t"})
    rec = InboundRecord("ai.requests.vision", 2, 41, b"k", b"v", (), 0)
    output = Classification(
        labels=[Label(index=1, label="cat", score=0.75), Label(index=0, label="dog", score=0.25)]
    )
    members = [
        MemberAnswer(spec, output, None),
        MemberAnswer(spec, InvalidRequestError("bad", code=ErrorCode.INVALID_PARAMS), None),
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
