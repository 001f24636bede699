"""From a micro-batch of consumed records to the messages that answer them.

For every record exactly one outcome is built, whatever happens: a result; an
error result plus a dead letter when the request was readable but could not be
served; a dead letter alone when not even a request id could be read; an
``expired`` result when its deadline passed before it ran. Outcomes come back
in the order of the records, which is the order they are published in.

Single-model requests take the fast path: their payloads are decoded together
on the decode threads and queued on the model lanes, where they batch. Cache
hits skip all of that; fallback and ensemble plans run per request (through
the same lanes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from opentelemetry.trace import Span, SpanContext

from altlas.consumers.records import InboundRecord
from altlas.models.errors import ModelError
from altlas.models.registry import ModelSpec
from altlas.orchestration.app.settings import Modality, TopicSettings
from altlas.orchestration.execution.cache import ResultCache, cache_key
from altlas.orchestration.execution.chunks import ChunkStream
from altlas.orchestration.execution.lanes import JobResult, ModelWorkers
from altlas.orchestration.execution.multi_model import DeadlineExceeded, Execution, Member, MultiModelExecutor
from altlas.orchestration.execution.preparation import Decoder
from altlas.orchestration.observability.tracing import Tracing
from altlas.orchestration.routing.planning import Plan, Planner
from altlas.orchestration.routing.task_detection import detect_task
from altlas.orchestration.serving.answers import Answers, ReplayOutput
from altlas.orchestration.serving.outcomes import Outcome, error_info
from altlas.orchestration.serving.replies import ReplyPolicy, ReplyTopicRefused
from altlas.pipelines.base import Prepared, held_bytes
from altlas.producers.publisher import OutboundMessage
from altlas.producers.refusals import Refusals
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import (
    AltlasError,
    DecodeError,
    ErrorCode,
    InvalidRequestError,
    PayloadTooLargeError,
    TransientError,
)
from altlas.schemas.modalities import REQUEST_TYPES
from altlas.schemas.types import (
    AnyRequest,
    DeadLetter,
    Record,
    ResultStatus,
)

log = logging.getLogger(__name__)

#: Records larger than this are read (Avro and validation) on a thread rather than on the event loop.
_READ_ON_LOOP_BYTES = 64 * 1024

__all__ = ["Outcome", "ProcessorContext", "RequestProcessor", "error_info"]


@dataclass
class ProcessorContext:
    """Everything the processors of all modalities share."""

    codec: AvroCodec
    planner: Planner
    executor: MultiModelExecutor
    workers: ModelWorkers
    topics: TopicSettings
    decoder: Decoder
    max_message_bytes: int
    tracing: Tracing
    enqueue: Callable[[OutboundMessage], Awaitable[asyncio.Future[Any]]]
    instance_id: str
    group_prefix: str
    cache: ResultCache | None = None
    observe: Callable[[str, Sequence[Outcome]], None] | None = None  # metrics hook, once per batch
    refusals: Refusals = field(default_factory=Refusals)  # what the broker refused, shared with publishers


class ByteBudget(Protocol):
    """The in-flight byte budget of the consumer feeding this processor."""

    def hold(self, nbytes: int) -> None: ...

    async def release(self, nbytes: int) -> None: ...


@dataclass(frozen=True)
class Overrides:
    """How a replay changes processing: the model to use, and deadlines that no longer apply."""

    model: str | None = None
    ignore_deadlines: bool = False
    output: ReplayOutput | None = None


@dataclass
class _Work:
    """One decoded, planned request on its way through the batch."""

    index: int
    request: AnyRequest
    plan: Plan
    span: Span | None
    cache_key: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class _Admitted:
    """A batch's admitted work, by how it will be answered."""

    now: datetime
    singles: list[_Work] = field(default_factory=list)
    multis: dict[int, tuple[_Work, asyncio.Task[Execution]]] = field(default_factory=dict)
    cached: dict[int, tuple[_Work, Record | asyncio.Future[Record], str]] = field(default_factory=dict)
    demand: list[str] = field(default_factory=list)


@dataclass
class _Group:
    """Requests of one batch that share a model and a deadline: submitted to its lane as one ticket."""

    deadline: float  # event-loop time
    works: list[_Work]
    items: list[Prepared]
    spans: list[SpanContext | None]
    on_chunk: Callable[[Record], None] | None = None


class RequestProcessor:
    """Turns consumed records of one modality into outcomes."""

    def __init__(
        self,
        modality: Modality,
        ctx: ProcessorContext,
        overrides: Overrides | None = None,
        *,
        budget: ByteBudget | None = None,
    ) -> None:
        self.modality = modality
        self.ctx = ctx
        self.overrides = overrides or Overrides()
        self.budget = budget
        self.request_type: type[AnyRequest] = REQUEST_TYPES[modality]
        self.group_id = f"{ctx.group_prefix}.{modality}"
        self.answers = Answers(
            modality,
            codec=ctx.codec,
            topics=ctx.topics,
            tracing=ctx.tracing,
            instance_id=ctx.instance_id,
            group_id=self.group_id,
            max_message_bytes=ctx.max_message_bytes,
            policy=ReplyPolicy(modality, ctx.topics, ctx.topics.reply_topics, ctx.refusals),
            replay=self.overrides.output,
        )

    # Kept for the stream worker's last-resort paths.
    def failure(self, rec: InboundRecord, exc: BaseException, request: AnyRequest | None) -> Outcome:
        """An error result (when possible) and a dead letter for ``rec``."""
        return self.answers.failure(rec, exc, request)

    def dead_letter(self, *args: Any, **kwargs: Any) -> OutboundMessage:
        """See Answers.dead_letter."""
        return self.answers.dead_letter(*args, **kwargs)

    # ------------------------------------------------------------ main entry
    async def process(self, records: Sequence[InboundRecord]) -> list[Outcome]:
        """One outcome per record, same order.

        Bad input never raises. A TransientError (a dependency such as the
        schema registry is down) does: the caller retries the batch later
        instead of answering it with errors.
        """
        try:
            outcomes = await self._process(records)
        except (asyncio.CancelledError, TransientError):
            raise
        except Exception as exc:  # a bug must not stall the partition: answer everything
            log.exception("batch processing failed; answering %d records with INTERNAL errors", len(records))
            outcomes = [self.answers.failure(r, exc, None) for r in records]
        if self.ctx.observe is not None:
            self.ctx.observe(self.modality, outcomes)
        return outcomes

    async def _process(self, records: Sequence[InboundRecord]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(records)
        decoded = await self._decode_all(records)
        batch = _Admitted(datetime.now(UTC))
        try:
            for i, (rec, request) in enumerate(zip(records, decoded, strict=True)):
                try:
                    if isinstance(request, AltlasError):
                        outcomes[i] = self.answers.failure(rec, request, None)
                    else:
                        outcomes[i] = await self._intake(i, rec, request, batch)
                except Exception as exc:  # one record's failure, never its batch's
                    outcomes[i] = self._fallback(
                        rec, None if isinstance(request, AltlasError) else request, exc
                    )
            await self._run_singles(records, batch.singles, outcomes)
            for i, (work, task) in batch.multis.items():
                outcomes[i] = await self._safely(
                    records[i], work, self._answer_execution(records[i], work, task)
                )
            for i, (work, value, how) in batch.cached.items():
                outcomes[i] = await self._safely(
                    records[i], work, self._answer_cached(records[i], work, value, how)
                )
        finally:
            for work in batch.singles:
                if work.cache_key is not None and self.ctx.cache is not None:
                    self.ctx.cache.abandon(work.cache_key, AltlasError("computation abandoned"))
            for key in batch.demand:
                self.ctx.workers.demand[key] -= 1
        return [o for o in outcomes if o is not None]

    async def _safely(self, rec: InboundRecord, work: _Work, answer: Awaitable[Outcome]) -> Outcome:
        """``answer``, or the record's error answer when building it raised."""
        try:
            return await answer
        except Exception as exc:
            return self._fallback(rec, work.request, exc)

    async def _intake(
        self, i: int, rec: InboundRecord, request: AnyRequest, batch: _Admitted
    ) -> Outcome | None:
        """Admit one decoded request: an outcome at once, or its work queued in the batch."""
        span = self.ctx.tracing.consume_span(
            rec.topic,
            rec.headers,
            {"altlas.request_id": request.request_id, "altlas.task": str(request.task)},
        )
        if self.overrides.model is not None:
            request = request.model_copy(update={"model": self.overrides.model})
        if self.overrides.ignore_deadlines and request.deadline is not None:
            request = request.model_copy(update={"deadline": None})
        if request.deadline is not None and request.deadline < batch.now:
            return self.answers.expired(rec, request, span)
        if self.answers.forced_topic is None:
            why = self.answers.policy.refusal(request.reply_topic)
            if why is not None:
                return self.answers.failure(rec, ReplyTopicRefused(why), request, span=span)
        try:
            plan = await self._plan(request)
        except (AltlasError, ModelError) as exc:
            return self.answers.failure(rec, exc, request, span=span)
        work = _Work(i, request, plan, span, attributes=dict(plan.attributes))
        for spec in plan.specs:
            self.ctx.workers.demand[spec.key] += 1
            batch.demand.append(spec.key)
        if plan.kind != "single":
            ctx = span.get_span_context() if span is not None else None
            batch.multis[i] = (work, asyncio.create_task(self.ctx.executor.run(request, plan, ctx)))
            return None
        hit = await self._cache_lookup(work) if self.ctx.cache is not None else None
        if hit is not None:
            batch.cached[i] = (work, *hit)
            return None
        batch.singles.append(work)
        return None

    async def _plan(self, request: AnyRequest) -> Plan:
        """The plan; task detection, which decodes a thumbnail of the payload, runs off the event loop."""
        planner = self.ctx.planner
        if str(request.task) != "auto" or request.model:
            return planner.plan(self.modality, request)
        detected = await asyncio.to_thread(
            detect_task, self.modality, request.payload, request.params, planner.available_tasks()
        )
        return planner.plan(self.modality, request, detected=detected)

    def _fallback(self, rec: InboundRecord, request: AnyRequest | None, exc: BaseException) -> Outcome:
        """The answer of a record whose handling raised: an error result if possible, else a dead letter."""
        log.warning(
            "request failed unexpectedly (%s: %s)", type(exc).__name__, exc,
            extra={"topic": rec.topic, "partition": rec.partition, "offset": rec.offset},
        )  # fmt: skip
        for attempt in (request, None):
            try:
                return self.answers.failure(rec, exc, attempt, default_topic=attempt is None)
            except Exception as again:
                exc_again = again
        info = error_info(exc)
        try:
            letter = self.answers.dead_letter(rec, info, type(exc).__name__, None, with_value=False)
            return Outcome(rec, [letter], request, info, dead_letter=True)
        except Exception:
            log.error("cannot even dead-letter a record (%s); committing past it", exc_again)
            return Outcome(rec, [], request, info)

    # ------------------------------------------------------------ decoding
    async def _decode_all(self, records: Sequence[InboundRecord]) -> list[AnyRequest | AltlasError]:
        remote_ids = getattr(self.ctx.codec.schema_ids, "remote", False)
        if remote_ids:  # registry look-ups are blocking I/O: do them off the event loop
            await asyncio.to_thread(self.ctx.codec.prefetch, [r.value for r in records if r.value], ())
        # Reading Avro holds the GIL for as long as the record is big (a 2 MB record of a long params
        # list takes a second): big ones are read on a thread, where the loop still gets its turns.
        big = {i for i, r in enumerate(records) if r.value is not None and len(r.value) > _READ_ON_LOOP_BYTES}
        off_loop: dict[int, AnyRequest | AltlasError] = {}
        if big:
            read = await asyncio.to_thread(lambda: {i: self._decode_or_error(records[i]) for i in big})
            off_loop.update(read)
        decoded = [off_loop[i] if i in big else self._decode_or_error(r) for i, r in enumerate(records)]
        if remote_ids:
            await asyncio.to_thread(self.ctx.codec.prefetch, (), self._outputs(records, decoded))
        return decoded

    def _decode_or_error(self, rec: InboundRecord) -> AnyRequest | AltlasError:
        """The request, or the error that answers it; a TransientError (registry down) is raised."""
        try:
            return self._decode(rec)
        except TransientError:
            raise
        except AltlasError as exc:
            return exc

    def _decode(self, rec: InboundRecord) -> AnyRequest:
        if rec.unreadable is not None:
            raise DecodeError(f"the Kafka client could not parse the record: {rec.unreadable}")
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

    def _outputs(
        self, records: Sequence[InboundRecord], decoded: Sequence[AnyRequest | AltlasError]
    ) -> set[tuple[str, str]]:
        """(record name, topic) pairs this batch's answers may be written as."""
        result = self.answers.result_type.avro_name
        topics = {self.answers.default_results}
        for rec, request in zip(records, decoded, strict=True):
            if isinstance(request, AltlasError):
                salvage = self.answers.salvage(rec)
                topics.add(self.answers.reply_topic(salvage.reply_topic if salvage else None))
            else:
                topics.add(self.answers.reply_topic(request.reply_topic))
        return {(result, t) for t in topics} | {(DeadLetter.avro_name, self.ctx.topics.dead_letter)}

    # ------------------------------------------------------------ cache
    async def _cache_lookup(self, work: _Work) -> tuple[Record | asyncio.Future[Record], str] | None:
        """A cached or in-flight identical answer; on a miss, this request becomes the one computing."""
        cache, request = self.ctx.cache, work.request
        if cache is None or request.params.get("cache") is False or request.params.get("stream") is True:
            return None
        deterministic = getattr(work.plan.pipeline, "deterministic", None)
        if deterministic is not None and not deterministic(request.params, work.plan.specs[0]):
            return None  # a random answer is not the answer: never reuse it
        key = cache_key(request.payload, work.plan.task, work.plan.specs[0], request.params)
        try:
            state, value = await cache.lookup(key)
        except Exception as exc:  # the cache is an optimisation: when it fails, compute
            log.warning("cache lookup failed (%s); computing", type(exc).__name__)
            return None
        if state == "miss":
            work.cache_key = key
            return None
        assert value is not None
        return value, state

    async def _answer_cached(
        self, rec: InboundRecord, work: _Work, value: Record | asyncio.Future[Record], how: str
    ) -> Outcome:
        spec = work.plan.specs[0]
        try:
            # Shielded: cancelling this batch (shutdown, a rewind) must not cancel the computation
            # other requests share, nor be taken for its failure.
            output = await asyncio.shield(value) if isinstance(value, asyncio.Future) else value
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the identical computation failed: so does this one
            return self._failure(rec, work, exc, spec=spec)
        work.attributes["cache"] = how
        return self.answers.result(
            rec,
            work.request,
            spec,
            output,
            None,
            work.span,
            attributes=work.attributes,
            task=_short(work.plan),
        )

    async def _cache_store(self, work: _Work, output: Record | BaseException) -> None:
        if work.cache_key is None or self.ctx.cache is None:
            return
        key, work.cache_key = work.cache_key, None
        if isinstance(output, BaseException):
            self.ctx.cache.abandon(key, output)
        else:
            await self.ctx.cache.complete(key, output)

    # ------------------------------------------------------------ single-model fast path
    async def _run_singles(
        self, records: Sequence[InboundRecord], singles: list[_Work], outcomes: list[Outcome | None]
    ) -> None:
        prepared = await self.ctx.decoder.prepare_many(
            [(w.plan.pipeline, w.request.payload, w.request.params, w.plan.specs[0]) for w in singles]
        )
        held = sum(held_bytes(p.data) for p in prepared if isinstance(p, Prepared)) if self.budget else 0
        if self.budget is not None:
            self.budget.hold(held)  # decoded inputs count like the records until their model has run
        try:
            await self._run_prepared(records, singles, prepared, outcomes)
        finally:
            if self.budget is not None:
                await self.budget.release(held)

    async def _run_prepared(
        self,
        records: Sequence[InboundRecord],
        singles: list[_Work],
        prepared: list[Prepared | BaseException],
        outcomes: list[Outcome | None],
    ) -> None:
        loop = asyncio.get_running_loop()
        now, budget = loop.time(), self.ctx.executor.budget
        # Requests for the same model with the same time budget (all of them, unless requests set
        # deadlines) go to its lane as one ticket: one future and one wait for the lot.
        by_key: dict[tuple[str, str, float], _Group] = {}
        groups: list[_Group] = []
        streams: dict[int, ChunkStream] = {}
        for work, prep in zip(singles, prepared, strict=True):
            i, spec = work.index, work.plan.specs[0]
            if isinstance(prep, BaseException):
                await self._cache_store(work, prep)
                outcomes[i] = self._failure(records[i], work, prep, default=ErrorCode.INVALID_PAYLOAD)
                continue
            ctx = work.span.get_span_context() if work.span is not None else None
            seconds = budget(work.request, spec)
            prep.deadline = now + seconds  # loop.time() is time.monotonic(): the runtime stops there
            if prep.params.get("stream") is True and hasattr(work.plan.pipeline, "run_stream"):
                streams[i] = self._chunk_stream(records[i], work)
                groups.append(_Group(now + seconds, [work], [prep], [ctx], streams[i].push))
                continue
            key = (spec.key, work.plan.pipeline.task, seconds)
            group = by_key.get(key)
            if group is None:
                group = by_key[key] = _Group(now + seconds, [], [], [])
                groups.append(group)
            group.works.append(work)
            group.items.append(prep)
            group.spans.append(ctx)
        futures = [
            self.ctx.workers.submit(
                g.works[0].plan.specs[0], g.works[0].plan.pipeline, g.items, g.spans, g.on_chunk
            )
            for g in groups
        ]
        timed_out = await self._await_with_deadlines([g.deadline for g in groups], futures)
        for n, (group, future) in enumerate(zip(groups, futures, strict=True)):
            spec = group.works[0].plan.specs[0]
            if n in timed_out:
                error = DeadlineExceeded(f"{spec.key} gave no answer within the request's time budget")
                for work in group.works:
                    self.ctx.workers.health_failure(spec, error)
                    await self._cache_store(work, error)
                    outcomes[work.index] = self._failure(records[work.index], work, error, spec=spec)
                continue
            for work, job in zip(group.works, future.result(), strict=True):
                i = work.index
                if work.cache_key is not None:
                    await self._cache_store(work, job.output)
                if job.attributes:  # per-request figures (time to first token, tokens/s, partial text)
                    work.attributes.update(job.attributes)
                try:
                    if isinstance(job.output, BaseException):
                        outcomes[i] = self._failure(
                            records[i], work, job.output, spec=spec, job=job, default=ErrorCode.MODEL_FAILED
                        )
                    else:
                        outcomes[i] = self.answers.result(
                            records[i], work.request, spec, job.output, job, work.span,
                            attributes=work.attributes, task=_short(work.plan),
                        )  # fmt: skip
                except Exception as exc:  # e.g. an output that does not encode: this record's failure
                    outcomes[i] = self._fallback(records[i], work.request, exc)
                outcomes[i].chunks = streams.get(i)  # type: ignore[union-attr]

    @staticmethod
    async def _await_with_deadlines(
        deadlines: list[float], futures: list[asyncio.Future[list[JobResult]]]
    ) -> set[int]:
        """Wait for the futures, each until its deadline; returns the indexes that ran out (cancelled)."""
        loop = asyncio.get_running_loop()
        pending = set(range(len(futures)))
        timed_out: set[int] = set()
        for deadline in sorted(set(deadlines)):
            if not pending:
                break
            _, still = await asyncio.wait(
                [futures[n] for n in pending], timeout=max(0.0, deadline - loop.time())
            )
            pending = {n for n in pending if futures[n] in still}
            for n in [n for n in pending if deadlines[n] <= deadline]:
                futures[n].cancel()
                timed_out.add(n)
                pending.discard(n)
        return timed_out

    def _chunk_stream(self, rec: InboundRecord, work: _Work) -> ChunkStream:
        spec = work.plan.specs[0]
        topic = self.answers.reply_topic(work.request.reply_topic)
        headers = self.ctx.tracing.produce_headers(None, topic, rec.headers)
        return ChunkStream(
            self.ctx.enqueue, lambda chunk: self.answers.partial(work.request, spec, chunk, headers)
        )

    # ------------------------------------------------------------ multi-model answers
    async def _answer_execution(
        self, rec: InboundRecord, work: _Work, task: asyncio.Task[Execution]
    ) -> Outcome:
        execution = await task
        attributes = {**work.attributes, **execution.attributes}
        members = execution.members if work.plan.kind == "ensemble" else []
        if isinstance(execution.output, BaseException):
            return self._failure(
                rec, work, execution.output, spec=None, attributes=attributes, members=members,
                default=ErrorCode.MODEL_FAILED,
            )  # fmt: skip
        status = ResultStatus.PARTIAL if execution.partial else ResultStatus.OK
        return self.answers.result(
            rec, work.request, execution.answered_by, execution.output, execution.job, work.span,
            status=status, attributes=attributes, members=members, task=_short(work.plan),
        )  # fmt: skip

    def _failure(
        self,
        rec: InboundRecord,
        work: _Work,
        exc: BaseException,
        *,
        spec: ModelSpec | None = None,
        job: JobResult | None = None,
        default: ErrorCode = ErrorCode.INTERNAL,
        attributes: dict[str, str] | None = None,
        members: Sequence[Member] = (),
    ) -> Outcome:
        return self.answers.failure(
            rec, exc, work.request, span=work.span, spec=spec, job=job, default=default,
            attributes=attributes if attributes is not None else work.attributes, members=members,
            task=_short(work.plan),
        )  # fmt: skip


def _short(plan: Plan) -> str:
    """``classify`` for ``vision.classify``: results carry the task without the modality."""
    return plan.task.split(".", 1)[1]
