"""Building the messages that answer a request: results, error results, dead letters.

Everything that turns an outcome into bytes for Kafka lives here, so the
processor only decides *what* happened. Answers go to the caller's reply
topic when the reply policy (replies.py) allows it, else to the modality's
results topic; an answer the broker has refused for its topic or size is
turned into an error result with the refusal's code. Every error also
produces a dead letter carrying the original record untouched. What became of
a record is an ``Outcome`` (outcomes.py); the headers saying where an answer
came from are lineage.py's; what is readable of a failed request, salvage.py's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opentelemetry.trace import Span

from altlas.consumers.records import InboundRecord
from altlas.models.registry import ModelSpec
from altlas.orchestration.app.settings import Modality, TopicSettings
from altlas.orchestration.execution.lanes import JobResult
from altlas.orchestration.execution.multi_model import Member
from altlas.orchestration.observability.tracing import Tracing
from altlas.orchestration.serving.lineage import Lineage, timings
from altlas.orchestration.serving.outcomes import Outcome, ResultSummary, error_info
from altlas.orchestration.serving.replies import ReplyPolicy
from altlas.orchestration.serving.salvage import Salvage
from altlas.producers.publisher import OutboundMessage
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import AltlasError, ErrorCode
from altlas.schemas.modalities import RESULT_TYPES
from altlas.schemas.types import (
    AnyRequest,
    DeadLetter,
    ErrorInfo,
    Header,
    Record,
    ResultStatus,
    to_datum,
)

log = logging.getLogger(__name__)

#: Most bytes of the original headers a dead letter without its value still carries (16 more per
#: header for its framing: 400,000 empty headers are not nothing).
MAX_SLIM_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True, kw_only=True)
class ReplayOutput:
    """Where a replay's answers go instead: all to one topic, marked with the replay's id.

    A replay writes no dead letters: the original run already wrote them, and
    a replay reads a topic rather than consuming it.
    """

    topic: str
    replay_id: str

    @property
    def headers(self) -> tuple[tuple[str, bytes], ...]:
        """The mark that tells a replayed answer from the original."""
        return (("altlas.replay", self.replay_id.encode()),)


class Answers:
    """Builds and encodes the answers of one modality."""

    def __init__(
        self,
        modality: Modality,
        *,
        codec: AvroCodec,
        topics: TopicSettings,
        tracing: Tracing,
        instance_id: str,
        group_id: str,
        max_message_bytes: int,
        policy: ReplyPolicy | None = None,
        replay: ReplayOutput | None = None,
    ) -> None:
        self.result_type = RESULT_TYPES[modality]
        self.codec = codec
        self.topics = topics
        self.tracing = tracing
        self.instance_id = instance_id
        self.group_id = group_id
        self.max_message_bytes = max_message_bytes
        self.default_results = topics.results(modality)
        self.replay = replay
        self.dead_letters = replay is None
        self.lineage = Lineage(tracing, instance_id, extra=replay.headers if replay else ())
        self.policy = policy or ReplyPolicy(modality, topics, topics.reply_topics)

    @property
    def forced_topic(self) -> str | None:
        """The one topic every answer goes to whatever was asked (a replay's), if any."""
        return self.replay.topic if self.replay is not None else None

    # ------------------------------------------------------------ results
    def result(
        self,
        rec: InboundRecord,
        request: AnyRequest,
        spec: ModelSpec | None,
        output: Record,
        job: JobResult | None,
        span: Span | None,
        *,
        status: ResultStatus = ResultStatus.OK,
        attributes: dict[str, str] | None = None,
        members: Sequence[Member] = (),
        task: str | None = None,
    ) -> Outcome:
        """A successful (or partial) result (an error result when the broker refused such an answer)."""
        topic = self.reply_topic(request.reply_topic)
        refused = self.policy.refused_answer(topic, request.request_id.encode())
        if refused is not None:
            error = AltlasError(refused.reason, code=refused.code)
            return self.failure(
                rec, error, request, span=span, spec=spec, job=job, attributes=attributes,
                members=members, task=task, default_topic=True,
            )  # fmt: skip
        result = _result(
            request_id=request.request_id, task=task or str(request.task), status=status, spec=spec,
            output=output, job=job, request=request, metadata=request.metadata,
            attributes=attributes, members=members,
        )  # fmt: skip
        msg = self.message(result, topic, request.request_id, self.lineage.headers(span, topic, rec, spec))
        self.tracing.end(span)
        return Outcome(rec, [msg], request, result=ResultSummary.of(result))

    def expired(self, rec: InboundRecord, request: AnyRequest, span: Span | None) -> Outcome:
        """The deadline passed before the request ran: an ``expired`` result, no dead letter."""
        info = ErrorInfo(
            code=ErrorCode.DEADLINE_EXCEEDED.value,
            message=f"deadline {request.deadline} passed before it ran",
        )
        result = _result(
            request_id=request.request_id, task=str(request.task), status=ResultStatus.EXPIRED,
            error=info, request=request, metadata=request.metadata,
        )  # fmt: skip
        topic = self.reply_topic(request.reply_topic)
        msg = self.message(result, topic, request.request_id, self.lineage.headers(span, topic, rec, None))
        self.tracing.end(span, "expired")
        return Outcome(rec, [msg], request, info, result=ResultSummary.of(result))

    def partial(
        self, request: AnyRequest, spec: ModelSpec, chunk: Record, headers: list[tuple[str, bytes]]
    ) -> OutboundMessage:
        """One streamed chunk, as a ``partial`` result."""
        result = _result(
            request_id=request.request_id, task=str(request.task), status=ResultStatus.PARTIAL,
            spec=spec, output=chunk, request=request, metadata=request.metadata,
        )  # fmt: skip
        return self.message(result, self.reply_topic(request.reply_topic), request.request_id, headers)

    def failure(
        self,
        rec: InboundRecord,
        exc: BaseException,
        request: AnyRequest | None,
        *,
        span: Span | None = None,
        spec: ModelSpec | None = None,
        job: JobResult | None = None,
        default: ErrorCode = ErrorCode.INTERNAL,
        attributes: dict[str, str] | None = None,
        members: Sequence[Member] = (),
        task: str | None = None,
        default_topic: bool = False,
    ) -> Outcome:
        """An error result (when a request id is readable) and always a dead letter.

        ``default_topic`` answers on the modality's results topic whatever the
        request asked: the last resort when answering on its reply topic failed.
        """
        info = error_info(exc, default=default)
        messages: list[OutboundMessage] = []
        result = None
        salvage = Salvage.of_request(request) if request is not None else self.salvage(rec)
        if salvage is not None:
            result = _result(
                request_id=salvage.request_id, task=task or salvage.task, status=ResultStatus.ERROR,
                spec=spec, error=info, job=job, request=request, metadata=salvage.metadata,
                attributes=attributes, members=members,
            )  # fmt: skip
            topic = self.default_results if default_topic else self.reply_topic(salvage.reply_topic)
            headers = self.lineage.headers(span, topic, rec, spec)
            messages.append(self.message(result, topic, salvage.request_id, headers))
        if self.dead_letters:
            request_id = salvage.request_id if salvage else None
            messages.append(self.dead_letter(rec, info, type(exc).__name__, request_id))
        self.tracing.end(span, info.code)
        log.info(
            "request failed",
            extra={"code": info.code, "topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
        )
        summary = ResultSummary.of(result) if result is not None else None
        return Outcome(rec, messages, request, info, result=summary, dead_letter=self.dead_letters)

    def dead_letter(
        self,
        rec: InboundRecord,
        info: ErrorInfo,
        error_class: str,
        request_id: str | None,
        *,
        with_value: bool = True,
    ) -> OutboundMessage:
        """A dead letter carrying the original record untouched (or without its value if it cannot fit,
        and then without its headers too when they are large: the request wrote them, and they may be
        what made every answer too large)."""
        headers = rec.headers
        omitted = "value"
        if not with_value and sum(len(k) + len(v) + 16 for k, v in headers) > MAX_SLIM_HEADER_BYTES:
            headers, omitted = (), "value and headers"
        letter = DeadLetter(
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            timestamp=_timestamp(rec.timestamp_ms),
            key=rec.key,
            value=rec.value if with_value else None,
            headers=[Header(key=k, value=v) for k, v in headers],
            error_code=info.code,
            error_class=error_class,
            error_message=info.message
            if with_value
            else f"{info.message} (original {omitted} omitted: too large)",
            request_id=request_id,
            consumer_group=self.group_id,
            instance_id=self.instance_id,
        )
        topic = self.topics.dead_letter
        return OutboundMessage(topic, self.codec.encode_record(letter, topic=topic), rec.key, ())

    # ------------------------------------------------------------ pieces
    def salvage(self, rec: InboundRecord) -> Salvage | None:
        """What is readable of a record that failed to decode as this modality's request."""
        return Salvage.of_record(rec, self.codec, self.max_message_bytes)

    def reply_topic(self, requested: str | None) -> str:
        """The caller's reply topic when the policy allows it; else the default."""
        if self.replay is not None:
            return self.replay.topic
        if not requested:
            return self.default_results
        return self.policy.topic(requested)

    def message(
        self, datum: dict[str, Any], topic: str, key: str, headers: list[tuple[str, bytes]]
    ) -> OutboundMessage:
        """Encode a result datum for ``topic``, keyed by ``key``."""
        value = self.codec.encode(self.result_type.avro_name, datum, topic=topic)
        return OutboundMessage(topic, value, key.encode(), tuple(headers))


def _result(
    *,
    request_id: str,
    task: str,
    status: ResultStatus,
    request: AnyRequest | None,
    metadata: dict[str, str],
    spec: ModelSpec | None = None,
    output: Record | None = None,
    error: ErrorInfo | None = None,
    job: JobResult | None = None,
    attributes: dict[str, str] | None = None,
    members: Sequence[Member] = (),
) -> dict[str, Any]:
    """The result as the Avro datum itself.

    Built as a plain dict rather than a pydantic Result: it runs once per
    answer, and model construction plus conversion cost more than the Avro
    encoding. The schema tests keep the two shapes identical.
    """
    return {
        "request_id": request_id,
        "task": task,
        "status": status.value,
        "model_id": spec.id if spec else "",
        "model_version": spec.version if spec else "",
        "output": None if output is None else (output.avro_name, to_datum(output)),
        "error": None
        if error is None
        else {"code": error.code, "message": error.message, "retriable": error.retriable},
        "timings": timings(request, job),
        "created_at": datetime.now(UTC),
        "attributes": attributes or {},
        "metadata": metadata,
        "members": [_member(request_id, task, m, request) for m in members],
    }


def _member(request_id: str, task: str, member: Member, request: AnyRequest | None) -> dict[str, Any]:
    """One ensemble member's part as a nested result datum (its own model, timings and error)."""
    failed = isinstance(member.output, BaseException)
    return _result(
        request_id=request_id,
        task=task,
        status=ResultStatus.ERROR if failed else ResultStatus.OK,
        spec=member.spec,
        output=None if failed else member.output,  # type: ignore[arg-type]
        error=error_info(member.output, default=ErrorCode.MODEL_FAILED) if failed else None,  # type: ignore[arg-type]
        job=member.job,
        request=request,
        metadata={},
    )


def _timestamp(ms: int) -> datetime | None:
    """A record's timestamp, or None when unset or beyond what a datetime holds (the producer chose it)."""
    if ms <= 0:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None
