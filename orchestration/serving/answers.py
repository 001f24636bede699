"""Building the messages that answer a request: results, error results, dead letters.

Everything that turns an outcome into bytes for Kafka lives here, so the
processor only decides *what* happened. Answers go to the caller's reply
topic when the reply policy (replies.py) allows it, else to the modality's
results topic; an answer the broker has refused for its topic or size is
turned into an error result with the refusal's code. Every error also
produces a dead letter carrying the original record untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from opentelemetry.trace import Span

from altlas.consumers.records import InboundRecord
from altlas.models.errors import ModelError
from altlas.models.registry import ModelSpec
from altlas.orchestration.app.settings import Modality, TopicSettings
from altlas.orchestration.execution.lanes import JobResult
from altlas.orchestration.observability.tracing import Tracing
from altlas.orchestration.serving.replies import ReplyPolicy
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


@dataclass
class Outcome:
    """The messages answering one consumed record."""

    record: InboundRecord
    messages: list[OutboundMessage]
    request: AnyRequest | None = None
    error: ErrorInfo | None = None
    chunks: Any = None  # a ChunkStream whose partial results are already being published
    result: ResultSummary | None = None  # what was sent, for metrics and replays
    dead_letter: bool = False


class ResultSummary(NamedTuple):
    """What metrics and replays need of a result, without decoding it again (one per answer)."""

    status: ResultStatus
    task: str
    model_id: str
    model_version: str
    total_ms: float
    attributes: dict[str, str]

    @classmethod
    def of(cls, datum: dict[str, Any]) -> ResultSummary:
        """Summarise a result datum."""
        return cls(
            ResultStatus(datum["status"]),
            datum["task"],
            datum["model_id"],
            datum["model_version"],
            datum["timings"]["total_ms"],
            datum["attributes"],
        )


@dataclass
class Salvage:
    """What can be read of a request that failed validation."""

    request_id: str
    task: str = "unknown"
    reply_topic: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class MemberAnswer:
    """One ensemble or fallback member's part, as it appears in the result."""

    spec: ModelSpec
    output: Record | BaseException
    job: JobResult | None


def error_info(exc: BaseException, *, default: ErrorCode = ErrorCode.INTERNAL) -> ErrorInfo:
    """The wire form of an exception: stable code, message, retriable flag."""
    if isinstance(exc, AltlasError):
        return ErrorInfo(code=exc.code.value, message=exc.message, retriable=exc.retriable)
    if isinstance(exc, ModelError):
        return ErrorInfo(code=exc.code, message=str(exc), retriable=exc.retriable)
    return ErrorInfo(code=default.value, message=f"{type(exc).__name__}: {exc}", retriable=False)


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
    ) -> None:
        self.result_type = RESULT_TYPES[modality]
        self.codec = codec
        self.topics = topics
        self.tracing = tracing
        self.instance_id = instance_id
        self.group_id = group_id
        self.max_message_bytes = max_message_bytes
        self.default_results = topics.results(modality)
        # Replays write every answer to one output topic, with no dead letters, and mark them.
        self.forced_topic: str | None = None
        self.dead_letters = True
        self.extra_headers: tuple[tuple[str, bytes], ...] = ()
        self._model_headers: dict[str, list[tuple[str, bytes]]] = {}
        self.policy = policy or ReplyPolicy(modality, topics, topics.reply_topics)

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
        members: Sequence[MemberAnswer] = (),
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
        result = self._result(
            request_id=request.request_id,
            task=task or str(request.task),
            status=status,
            spec=spec,
            output=output,
            job=job,
            request=request,
            metadata=request.metadata,
            attributes=attributes,
            members=members,
        )
        msg = self.message(result, topic, request.request_id, self.headers(span, topic, rec, spec))
        self.tracing.end(span)
        return Outcome(rec, [msg], request, result=ResultSummary.of(result))

    def expired(self, rec: InboundRecord, request: AnyRequest, span: Span | None) -> Outcome:
        """The deadline passed before the request ran: an ``expired`` result, no dead letter."""
        info = ErrorInfo(
            code=ErrorCode.DEADLINE_EXCEEDED.value,
            message=f"deadline {request.deadline} passed before it ran",
        )
        result = self._result(
            request_id=request.request_id,
            task=str(request.task),
            status=ResultStatus.EXPIRED,
            error=info,
            request=request,
            metadata=request.metadata,
        )
        topic = self.reply_topic(request.reply_topic)
        msg = self.message(result, topic, request.request_id, self.headers(span, topic, rec, None))
        self.tracing.end(span, "expired")
        return Outcome(rec, [msg], request, info, result=ResultSummary.of(result))

    def partial(
        self, request: AnyRequest, spec: ModelSpec, chunk: Record, headers: list[tuple[str, bytes]]
    ) -> OutboundMessage:
        """One streamed chunk, as a ``partial`` result."""
        result = self._result(
            request_id=request.request_id,
            task=str(request.task),
            status=ResultStatus.PARTIAL,
            spec=spec,
            output=chunk,
            request=request,
            metadata=request.metadata,
        )
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
        members: Sequence[MemberAnswer] = (),
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
        salvage = self._salvage_from(request) if request is not None else self.salvage(rec)
        if salvage is not None:
            result = self._result(
                request_id=salvage.request_id,
                task=task or salvage.task,
                status=ResultStatus.ERROR,
                spec=spec,
                error=info,
                job=job,
                request=request,
                metadata=salvage.metadata,
                attributes=attributes,
                members=members,
            )
            topic = self.default_results if default_topic else self.reply_topic(salvage.reply_topic)
            messages.append(
                self.message(result, topic, salvage.request_id, self.headers(span, topic, rec, spec))
            )
        if self.dead_letters:
            messages.append(
                self.dead_letter(rec, info, type(exc).__name__, salvage.request_id if salvage else None)
            )
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
        """A dead letter carrying the original record untouched (or without its value if it cannot fit)."""
        letter = DeadLetter(
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            timestamp=_timestamp(rec.timestamp_ms),
            key=rec.key,
            value=rec.value if with_value else None,
            headers=[Header(key=k, value=v) for k, v in rec.headers],
            error_code=info.code,
            error_class=error_class,
            error_message=info.message
            if with_value
            else f"{info.message} (original value omitted: too large)",
            request_id=request_id,
            consumer_group=self.group_id,
            instance_id=self.instance_id,
        )
        topic = self.topics.dead_letter
        return OutboundMessage(topic, self.codec.encode_record(letter, topic=topic), rec.key, ())

    # ------------------------------------------------------------ pieces
    def _result(
        self,
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
        members: Sequence[MemberAnswer] = (),
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
            "timings": self.timings(request, job),
            "created_at": datetime.now(UTC),
            "attributes": attributes or {},
            "metadata": metadata,
            "members": [self._member(request_id, task, m, request) for m in members],
        }

    def _member(
        self, request_id: str, task: str, member: MemberAnswer, request: AnyRequest | None
    ) -> dict[str, Any]:
        failed = isinstance(member.output, BaseException)
        return self._result(
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

    def salvage(self, rec: InboundRecord) -> Salvage | None:
        """Read the request id of a record that failed to decode as our request type."""
        if rec.value is None or len(rec.value) > self.max_message_bytes:
            return None
        try:
            writer = self.codec.writer_of(rec.value)
            datum: dict[str, Any] = self.codec.decode(rec.value, writer.name)
        except Exception:
            return None
        request_id = datum.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            return None
        reply = datum.get("reply_topic")
        meta = datum.get("metadata")
        return Salvage(
            request_id=request_id,
            task=str(datum.get("task", "unknown")),
            reply_topic=reply if isinstance(reply, str) else None,
            metadata=meta if isinstance(meta, dict) else {},
        )

    @staticmethod
    def _salvage_from(request: AnyRequest) -> Salvage:
        return Salvage(request.request_id, str(request.task), request.reply_topic, request.metadata)

    def headers(
        self, span: Span | None, topic: str, rec: InboundRecord, spec: ModelSpec | None
    ) -> list[tuple[str, bytes]]:
        """Trace context plus lineage: which record and which model configuration produced this."""
        headers = self.tracing.produce_headers(span, topic, rec.headers)
        headers += [
            ("altlas.instance", self.instance_id.encode()),
            ("altlas.source.topic", rec.topic.encode()),
            ("altlas.source.partition", str(rec.partition).encode()),
            ("altlas.source.offset", str(rec.offset).encode()),
        ]
        if spec is not None:
            model = self._model_headers.get(spec.key)
            if model is None:  # the same three per model: built once, not per result
                model = self._model_headers[spec.key] = [
                    ("altlas.model.id", spec.id.encode()),
                    ("altlas.model.version", spec.version.encode()),
                    ("altlas.model.config", spec.config_hash().encode()),
                ]
            headers += model
        return headers + list(self.extra_headers)

    def reply_topic(self, requested: str | None) -> str:
        """The caller's reply topic when the policy allows it; else the default."""
        if self.forced_topic is not None:
            return self.forced_topic
        if not requested:
            return self.default_results
        return self.policy.topic(requested)

    @staticmethod
    def timings(request: AnyRequest | None, job: JobResult | None) -> dict[str, Any]:
        """Where the time went, from the request's created_at to now (a Timings datum)."""
        now = time.time()
        created = request.created_at.timestamp() if request is not None else now
        started = job.started_at if job is not None else now
        return {
            "queued_ms": max(0.0, (started - created) * 1000),
            "inference_ms": job.inference_ms if job is not None else 0.0,
            "batch_size": job.batch_size if job is not None else 0,
            "total_ms": max(0.0, (now - created) * 1000),
        }

    def message(
        self, datum: dict[str, Any], topic: str, key: str, headers: list[tuple[str, bytes]]
    ) -> OutboundMessage:
        """Encode a result datum for ``topic``, keyed by ``key``."""
        value = self.codec.encode(self.result_type.avro_name, datum, topic=topic)
        return OutboundMessage(topic, value, key.encode(), tuple(headers))


def _timestamp(ms: int) -> datetime | None:
    """A record's timestamp, or None when unset or beyond what a datetime holds (the producer chose it)."""
    if ms <= 0:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None
