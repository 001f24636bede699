"""From a micro-batch of consumed records to the messages that answer them.

For every record exactly one outcome is built, whatever happens: a result; an
error result plus a dead letter when the request was readable but could not be
served; a dead letter alone when not even a request id could be read; an
``expired`` result when its deadline passed before it ran. Outcomes come back
in the order of the records, which is the order they are published in.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.trace import Span

from altlas.consumers.records import InboundRecord
from altlas.models.errors import ModelError
from altlas.models.registry import ModelRegistry, ModelSpec
from altlas.orchestration.settings import MODALITIES, Modality, TopicSettings
from altlas.orchestration.tracing import Tracing
from altlas.orchestration.workers import JobResult, ModelWorkers
from altlas.pipelines.base import Pipeline, Prepared
from altlas.producers.publisher import OutboundMessage
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import (
    AltlasError,
    DecodeError,
    ErrorCode,
    InvalidRequestError,
    PayloadTooLargeError,
    TransientError,
)
from altlas.schemas.types import (
    AnyRequest,
    AudioRequest,
    AudioResult,
    DeadLetter,
    ErrorInfo,
    Header,
    Record,
    Result,
    ResultStatus,
    TextRequest,
    TextResult,
    Timings,
    VisionRequest,
    VisionResult,
)

log = logging.getLogger(__name__)

REQUEST_TYPES: dict[str, type[AnyRequest]] = {
    "text": TextRequest,
    "vision": VisionRequest,
    "audio": AudioRequest,
}
RESULT_TYPES: dict[str, type[Result]] = {"text": TextResult, "vision": VisionResult, "audio": AudioResult}
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class ChunkStream:
    """Publishes one request's partial results in order, while its model is still running."""

    def __init__(
        self,
        enqueue: Callable[[OutboundMessage], Awaitable[asyncio.Future[Any]]],
        build: Callable[[Record], OutboundMessage],
    ) -> None:
        self._enqueue = enqueue
        self._build = build
        self._queue: asyncio.Queue[OutboundMessage | None] = asyncio.Queue()
        self.acks: list[asyncio.Future[Any]] = []
        self._task = asyncio.create_task(self._drain())

    def push(self, chunk: Record) -> None:
        """Called on the event loop for each chunk the model emits."""
        self._queue.put_nowait(self._build(chunk))

    async def _drain(self) -> None:
        while (msg := await self._queue.get()) is not None:
            try:
                self.acks.append(await self._enqueue(msg))
            except Exception as exc:  # a lost chunk is tolerable; the final result is not
                log.warning("dropping a streamed chunk for %s: %s", msg.topic, exc)

    async def close(self) -> list[asyncio.Future[Any]]:
        """Wait until every chunk is queued for sending; returns their ack futures."""
        self._queue.put_nowait(None)
        await self._task
        return self.acks


@dataclass
class Outcome:
    """The messages answering one consumed record."""

    record: InboundRecord
    messages: list[OutboundMessage]
    request: AnyRequest | None = None
    error: ErrorInfo | None = None
    chunks: ChunkStream | None = None  # partial results already being published


@dataclass
class _Salvage:
    """What can be read of a request that failed validation."""

    request_id: str
    task: str = "unknown"
    reply_topic: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: datetime | None = None


def error_info(exc: BaseException, *, default: ErrorCode = ErrorCode.INTERNAL) -> ErrorInfo:
    """The wire form of an exception: stable code, message, retriable flag."""
    if isinstance(exc, AltlasError):
        return ErrorInfo(code=exc.code.value, message=exc.message, retriable=exc.retriable)
    if isinstance(exc, ModelError):
        return ErrorInfo(code=exc.code, message=str(exc), retriable=exc.retriable)
    return ErrorInfo(code=default.value, message=f"{type(exc).__name__}: {exc}", retriable=False)


@dataclass
class ProcessorContext:
    """Everything the processors of all modalities share."""

    codec: AvroCodec
    registry: ModelRegistry
    workers: ModelWorkers
    pipelines: dict[str, Pipeline]
    topics: TopicSettings
    decode_pool: Executor
    decode_threads: int
    max_message_bytes: int
    tracing: Tracing
    enqueue: Callable[[OutboundMessage], Awaitable[asyncio.Future[Any]]]
    instance_id: str
    group_prefix: str


class RequestProcessor:
    """Turns consumed records of one modality into outcomes."""

    def __init__(self, modality: Modality, ctx: ProcessorContext) -> None:
        self.modality = modality
        self.ctx = ctx
        self.request_type: type[AnyRequest] = REQUEST_TYPES[modality]
        self.result_type = RESULT_TYPES[modality]
        self.default_results = ctx.topics.results(modality)
        self.group_id = f"{ctx.group_prefix}.{modality}"
        topics = ctx.topics
        self._forbidden_replies = {topics.requests(m) for m in MODALITIES} | {
            topics.model_commands,
            topics.model_status,
            topics.dead_letter,
        }

    # ------------------------------------------------------------ main entry
    async def process(self, records: Sequence[InboundRecord]) -> list[Outcome]:
        """One outcome per record, same order.

        Bad input never raises. A TransientError (a dependency such as the
        schema registry is down) does: the caller retries the batch later
        instead of answering it with errors.
        """
        try:
            return await self._process(records)
        except (asyncio.CancelledError, TransientError):
            raise
        except Exception as exc:  # a bug must not stall the partition: answer everything
            log.exception("batch processing failed; answering %d records with INTERNAL errors", len(records))
            return [self.failure(r, exc, None) for r in records]

    async def _process(self, records: Sequence[InboundRecord]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(records)
        todo: list[tuple[int, AnyRequest, ModelSpec, Pipeline, Span | None]] = []
        now = datetime.now(UTC)
        remote_ids = getattr(self.ctx.codec.schema_ids, "remote", False)
        if remote_ids:
            await asyncio.to_thread(self.ctx.codec.prefetch, [r.value for r in records if r.value], ())
        decoded: list[AnyRequest | AltlasError] = []
        for rec in records:
            try:
                decoded.append(self._decode(rec))
            except TransientError:
                raise
            except AltlasError as exc:
                decoded.append(exc)
        if remote_ids:
            await asyncio.to_thread(self.ctx.codec.prefetch, (), self._outputs(records, decoded))
        for i, (rec, request) in enumerate(zip(records, decoded, strict=True)):
            if isinstance(request, AltlasError):
                outcomes[i] = self.failure(rec, request, None)
                continue
            span = self.ctx.tracing.consume_span(
                rec.topic,
                rec.headers,
                {"altlas.request_id": request.request_id, "altlas.task": str(request.task)},
            )
            if request.deadline is not None and request.deadline < now:
                outcomes[i] = self._expired(rec, request, span)
                continue
            try:
                spec, pipeline = self._route(request)
            except (AltlasError, ModelError) as exc:
                outcomes[i] = self.failure(rec, exc, request, span=span)
                continue
            todo.append((i, request, spec, pipeline, span))

        prepared = await self._prepare_all([(req, spec, pipe) for _, req, spec, pipe, _ in todo])
        futures: dict[int, asyncio.Future[JobResult]] = {}
        streams: dict[int, ChunkStream] = {}
        for (i, request, spec, pipeline, span), prep in zip(todo, prepared, strict=True):
            if isinstance(prep, BaseException):
                outcomes[i] = self.failure(
                    records[i], prep, request, span=span, default=ErrorCode.INVALID_PAYLOAD
                )
                continue
            ctx = span.get_span_context() if span is not None else None
            on_chunk = None
            if prep.params.get("stream") is True and hasattr(pipeline, "run_stream"):
                streams[i] = self._chunk_stream(records[i], request, spec, span)
                on_chunk = streams[i].push
            futures[i] = self.ctx.workers.submit(spec, pipeline, prep, ctx, on_chunk)
        if futures:
            await asyncio.gather(*futures.values())
        for i, request, spec, _, span in todo:
            if i in futures:
                answer = self._answer(records[i], request, spec, futures[i].result(), span)
                answer.chunks = streams.get(i)
                outcomes[i] = answer
        return [o for o in outcomes if o is not None]

    # ------------------------------------------------------------ steps
    def _outputs(
        self, records: Sequence[InboundRecord], decoded: Sequence[AnyRequest | AltlasError]
    ) -> set[tuple[str, str]]:
        """(record name, topic) pairs this batch's answers may be written as."""
        result = self.result_type.avro_name
        topics = {self.default_results}
        for rec, request in zip(records, decoded, strict=True):
            if isinstance(request, AltlasError):
                salvage = self._salvage(rec)
                topics.add(self._reply_topic(salvage.reply_topic if salvage else None))
            else:
                topics.add(self._reply_topic(request.reply_topic))
        return {(result, t) for t in topics} | {(DeadLetter.avro_name, self.ctx.topics.dead_letter)}

    def _decode(self, rec: InboundRecord) -> AnyRequest:
        if rec.value is None:
            raise DecodeError("record has no value (tombstone)")
        if len(rec.value) > self.ctx.max_message_bytes:
            raise PayloadTooLargeError(
                f"record of {len(rec.value)} bytes exceeds the limit of {self.ctx.max_message_bytes}"
            )
        request = self.ctx.codec.decode_record(rec.value, self.request_type)
        if not request.request_id:
            raise InvalidRequestError("request_id is empty", code=ErrorCode.INVALID_PAYLOAD)
        return request

    def _route(self, request: AnyRequest) -> tuple[ModelSpec, Pipeline]:
        task = str(request.task)
        registry = self.ctx.registry
        spec = registry.get(request.model) if request.model else None
        if task == "auto":
            if spec is None:
                raise AltlasError(
                    "task 'auto' needs a model id to infer the task from", code=ErrorCode.UNKNOWN_TASK
                )
            own = [t for t in spec.tasks if t.startswith(f"{self.modality}.")]
            task = (own or [spec.task])[0].split(".", 1)[1]
        full_task = f"{self.modality}.{task}"
        pipeline = self.ctx.pipelines.get(full_task)
        if pipeline is None:
            raise AltlasError(
                f"no pipeline serves {self.modality} task {task!r}", code=ErrorCode.UNKNOWN_TASK
            )
        if spec is None:
            spec = registry.default_for(full_task)
            if spec is None:
                raise AltlasError(f"no model configured for {full_task}", code=ErrorCode.UNKNOWN_MODEL)
        if not spec.serves(full_task):
            raise AltlasError(
                f"model {spec.key} serves {', '.join(spec.tasks)}, not {full_task}",
                code=ErrorCode.UNKNOWN_MODEL,
            )
        return spec, pipeline

    async def _prepare_all(
        self, todo: list[tuple[AnyRequest, ModelSpec, Pipeline]]
    ) -> list[Prepared | BaseException]:
        if not todo:
            return []
        loop = asyncio.get_running_loop()
        chunks = max(1, min(self.ctx.decode_threads, len(todo) // 8))
        size = -(-len(todo) // chunks)
        parts = [todo[i : i + size] for i in range(0, len(todo), size)]
        results = await asyncio.gather(
            *(loop.run_in_executor(self.ctx.decode_pool, _prepare_many, p) for p in parts)
        )
        return [item for part in results for item in part]

    # ------------------------------------------------------------ answers
    def _answer(
        self, rec: InboundRecord, request: AnyRequest, spec: ModelSpec, job: JobResult, span: Span | None
    ) -> Outcome:
        if isinstance(job.output, BaseException):
            return self.failure(
                rec, job.output, request, span=span, spec=spec, job=job, default=ErrorCode.MODEL_FAILED
            )
        result = self.result_type.model_validate(
            {
                "request_id": request.request_id,
                "task": str(request.task),
                "status": ResultStatus.OK,
                "model_id": spec.id,
                "model_version": spec.version,
                "output": job.output,
                "timings": self._timings(request, job),
                "metadata": request.metadata,
            }
        )
        topic = self._reply_topic(request.reply_topic)
        msg = self._message(
            result, topic, request.request_id, self.ctx.tracing.produce_headers(span, topic, rec.headers)
        )
        self.ctx.tracing.end(span)
        return Outcome(rec, [msg], request)

    def _chunk_stream(
        self, rec: InboundRecord, request: AnyRequest, spec: ModelSpec, span: Span | None
    ) -> ChunkStream:
        topic = self._reply_topic(request.reply_topic)
        headers = self.ctx.tracing.produce_headers(None, topic, rec.headers)

        def build(chunk: Record) -> OutboundMessage:
            partial = self.result_type.model_validate(
                {
                    "request_id": request.request_id,
                    "task": str(request.task),
                    "status": ResultStatus.PARTIAL,
                    "model_id": spec.id,
                    "model_version": spec.version,
                    "output": chunk,
                    "timings": self._timings(request, None),
                    "metadata": request.metadata,
                }
            )
            return self._message(partial, topic, request.request_id, headers)

        return ChunkStream(self.ctx.enqueue, build)

    def _expired(self, rec: InboundRecord, request: AnyRequest, span: Span | None) -> Outcome:
        info = ErrorInfo(
            code=ErrorCode.DEADLINE_EXCEEDED.value,
            message=f"deadline {request.deadline} passed before it ran",
        )
        result = self.result_type(
            request_id=request.request_id,
            task=str(request.task),
            status=ResultStatus.EXPIRED,
            error=info,
            timings=self._timings(request, None),
            metadata=request.metadata,
        )
        topic = self._reply_topic(request.reply_topic)
        msg = self._message(
            result, topic, request.request_id, self.ctx.tracing.produce_headers(span, topic, rec.headers)
        )
        self.ctx.tracing.end(span, "expired")
        return Outcome(rec, [msg], request, info)

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
    ) -> Outcome:
        """An error result (when a request id is readable) and always a dead letter."""
        info = error_info(exc, default=default)
        messages: list[OutboundMessage] = []
        salvage = self._salvage_from(request) if request is not None else self._salvage(rec)
        if salvage is not None:
            result = self.result_type(
                request_id=salvage.request_id,
                task=salvage.task,
                status=ResultStatus.ERROR,
                model_id=spec.id if spec else "",
                model_version=spec.version if spec else "",
                error=info,
                timings=self._timings(request, job),
                metadata=salvage.metadata,
            )
            topic = self._reply_topic(salvage.reply_topic)
            headers = self.ctx.tracing.produce_headers(span, topic, rec.headers)
            messages.append(self._message(result, topic, salvage.request_id, headers))
        messages.append(
            self.dead_letter(rec, info, type(exc).__name__, salvage.request_id if salvage else None)
        )
        self.ctx.tracing.end(span, info.code)
        log.info(
            "request failed",
            extra={"code": info.code, "topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
        )
        return Outcome(rec, messages, request, info)

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
            timestamp=datetime.fromtimestamp(rec.timestamp_ms / 1000, UTC) if rec.timestamp_ms > 0 else None,
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
            instance_id=self.ctx.instance_id,
        )
        topic = self.ctx.topics.dead_letter
        return OutboundMessage(topic, self.ctx.codec.encode_record(letter, topic=topic), rec.key, ())

    # ------------------------------------------------------------ helpers
    def _salvage(self, rec: InboundRecord) -> _Salvage | None:
        """Read the request id of a record that failed to decode as our request type."""
        if rec.value is None or len(rec.value) > self.ctx.max_message_bytes:
            return None
        try:
            writer = self.ctx.codec.writer_of(rec.value)
            datum: dict[str, Any] = self.ctx.codec.decode(rec.value, writer.name)
        except Exception:
            return None
        request_id = datum.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            return None
        reply = datum.get("reply_topic")
        meta = datum.get("metadata")
        return _Salvage(
            request_id=request_id,
            task=str(datum.get("task", "unknown")),
            reply_topic=reply if isinstance(reply, str) else None,
            metadata=meta if isinstance(meta, dict) else {},
        )

    @staticmethod
    def _salvage_from(request: AnyRequest) -> _Salvage:
        return _Salvage(request.request_id, str(request.task), request.reply_topic, request.metadata)

    def _reply_topic(self, requested: str | None) -> str:
        """The caller's reply topic when it is a legal, non-internal name; else the default."""
        if not requested:
            return self.default_results
        if not _TOPIC_NAME.match(requested) or requested in self._forbidden_replies:
            log.warning("refusing reply_topic %r; answering on %s", requested, self.default_results)
            return self.default_results
        return requested

    def _timings(self, request: AnyRequest | None, job: JobResult | None) -> Timings:
        now = time.time()
        created = request.created_at.timestamp() if request is not None else now
        started = job.started_at if job is not None else now
        return Timings(
            queued_ms=max(0.0, (started - created) * 1000),
            inference_ms=job.inference_ms if job is not None else 0.0,
            batch_size=job.batch_size if job is not None else 0,
            total_ms=max(0.0, (now - created) * 1000),
        )

    def _message(
        self, record: Record, topic: str, key: str, headers: list[tuple[str, bytes]]
    ) -> OutboundMessage:
        return OutboundMessage(
            topic, self.ctx.codec.encode_record(record, topic=topic), key.encode(), tuple(headers)
        )


def _prepare_many(todo: list[tuple[AnyRequest, ModelSpec, Pipeline]]) -> list[Prepared | BaseException]:
    """Decode payloads on a worker thread; each failure stays with its request."""
    out: list[Prepared | BaseException] = []
    for request, spec, pipeline in todo:
        try:
            out.append(pipeline.prepare(request.payload, request.params, spec))
        except Exception as exc:
            out.append(exc)
    return out
