"""From a micro-batch of consumed records to the messages that answer them.

For every record exactly one outcome is built, whatever happens: a result; an
error result plus a dead letter when the request was readable but could not be
served; a dead letter alone when not even a request id could be read; an
``expired`` result when its deadline passed before it ran. Outcomes come back
in the order of the records, which is the order they are published in.

A batch takes four steps, each owned elsewhere but run from here:

1. intake (intake.py): bytes become requests, or the errors that answer them;
2. admit: expired requests and refused reply topics are answered at once, the
   rest planned; a single-model request passes the cache gate
   (execution/cache_gate.py), which may answer it from the cache or from an
   identical request already running;
3. execute: single-model requests run batched on their models' lanes
   (execution/single_model.py); fallback and ensemble plans started at
   admission run per request (execution/multi_model.py), through the same lanes;
4. answer: what each run came to becomes the record's outcome (answers.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from altlas.consumers.records import InboundRecord
from altlas.models.errors import ModelError
from altlas.models.registry import ModelSpec
from altlas.orchestration.app.settings import Modality, TopicSettings
from altlas.orchestration.execution.cache import ResultCache
from altlas.orchestration.execution.cache_gate import Cached, CacheGate, Miss
from altlas.orchestration.execution.chunks import ChunkStream
from altlas.orchestration.execution.lanes import JobResult, ModelWorkers
from altlas.orchestration.execution.multi_model import Execution, Member, MultiModelExecutor
from altlas.orchestration.execution.preparation import Decoder
from altlas.orchestration.execution.single_model import ByteBudget, SingleModelExecutor, SingleRun, Work
from altlas.orchestration.observability.tracing import Tracing
from altlas.orchestration.routing.planning import Plan, Planner
from altlas.orchestration.routing.task_detection import detect_task
from altlas.orchestration.serving.answers import Answers, ReplayOutput
from altlas.orchestration.serving.intake import Intake
from altlas.orchestration.serving.outcomes import Outcome, error_info
from altlas.orchestration.serving.replies import ReplyPolicy, ReplyTopicRefused
from altlas.producers.publisher import OutboundMessage
from altlas.producers.refusals import Refusals
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import AltlasError, ErrorCode, TransientError
from altlas.schemas.modalities import REQUEST_TYPES
from altlas.schemas.types import AnyRequest, ResultStatus

log = logging.getLogger(__name__)

__all__ = ["ByteBudget", "Outcome", "Overrides", "ProcessorContext", "RequestProcessor", "error_info"]


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


@dataclass(frozen=True)
class Overrides:
    """How a replay changes processing: the model to use, and deadlines that no longer apply."""

    model: str | None = None
    ignore_deadlines: bool = False
    output: ReplayOutput | None = None


@dataclass
class _Batch:
    """One micro-batch on its way through the steps: what is answered, and what still runs."""

    records: Sequence[InboundRecord]
    now: datetime
    outcomes: list[Outcome | None] = field(default_factory=list)
    singles: list[Work] = field(default_factory=list)
    multis: list[tuple[Work, asyncio.Task[Execution]]] = field(default_factory=list)
    cached: list[tuple[Work, Cached]] = field(default_factory=list)
    demand: list[str] = field(default_factory=list)  # model keys counted as awaited, to uncount


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
        self.intake = Intake(
            self.request_type,
            ctx.codec,
            self.answers,
            max_message_bytes=ctx.max_message_bytes,
            dead_letter_topic=ctx.topics.dead_letter,
        )
        self.gate = CacheGate(ctx.cache)
        self.singles = SingleModelExecutor(
            ctx.workers, ctx.decoder, self.gate, seconds=ctx.executor.budget, budget=budget
        )
        self.finish = _Finish(self.answers)

    # Kept for the stream worker's last-resort paths: serving/loop.py calls it (being split elsewhere).
    def dead_letter(self, *args: Any, **kwargs: Any) -> OutboundMessage:
        """See Answers.dead_letter."""
        return self.answers.dead_letter(*args, **kwargs)

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
        """The four steps; whatever ends early, routed requests are counted out and the cache freed."""
        requests = await self.intake.decode_all(records)  # 1. intake
        batch = _Batch(records, datetime.now(UTC), [None] * len(records))
        try:
            await self._admit_all(batch, requests)  # 2. admit (multi-model plans start running here)
            runs = await self.singles.run(batch.singles, self._chunk_stream)  # 3. execute
            await self._answer(batch, runs)  # 4. answer
        finally:
            self.gate.abandon([w.cache_key for w in batch.singles], AltlasError("computation abandoned"))
            for key in batch.demand:
                self.ctx.workers.demand[key] -= 1
        return [o for o in batch.outcomes if o is not None]

    # ------------------------------------------------------------ admit
    async def _admit_all(self, batch: _Batch, requests: Sequence[AnyRequest | AltlasError]) -> None:
        """Answer what needs no model now; queue the rest in the batch by how it will run."""
        for i, (rec, request) in enumerate(zip(batch.records, requests, strict=True)):
            readable = None if isinstance(request, AltlasError) else request
            try:
                if isinstance(request, AltlasError):
                    batch.outcomes[i] = self.answers.failure(rec, request, None)
                else:
                    batch.outcomes[i] = await self._admit(i, rec, request, batch)
            except Exception as exc:  # one record's failure, never its batch's
                batch.outcomes[i] = self.finish.fallback(rec, readable, exc)

    async def _admit(self, i: int, rec: InboundRecord, request: AnyRequest, batch: _Batch) -> Outcome | None:
        """An outcome at once, or None with the request's work queued in the batch."""
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
        work = Work(i, rec, request, plan, span, attributes=dict(plan.attributes))
        for spec in plan.specs:
            self.ctx.workers.demand[spec.key] += 1
            batch.demand.append(spec.key)
        if plan.kind != "single":
            ctx = span.get_span_context() if span is not None else None
            batch.multis.append((work, asyncio.create_task(self.ctx.executor.run(request, plan, ctx))))
            return None
        found = await self.gate.lookup(request, plan)
        if isinstance(found, Cached):
            batch.cached.append((work, found))
            return None
        if isinstance(found, Miss):
            work.cache_key = found.key
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

    def _chunk_stream(self, work: Work) -> ChunkStream:
        """Publishes a streamed request's partial results while its model runs."""
        spec = work.plan.specs[0]
        topic = self.answers.reply_topic(work.request.reply_topic)
        headers = self.ctx.tracing.produce_headers(None, topic, work.record.headers)
        return ChunkStream(
            self.ctx.enqueue, lambda chunk: self.answers.partial(work.request, spec, chunk, headers)
        )

    # ------------------------------------------------------------ answer
    async def _answer(self, batch: _Batch, runs: Sequence[SingleRun]) -> None:
        """Every admitted request's outcome, from its run, its multi-model execution or the cache."""
        for work, run in zip(batch.singles, runs, strict=True):
            batch.outcomes[work.index] = self.finish.single(work, run)
        for work, task in batch.multis:
            batch.outcomes[work.index] = await self.finish.safely(work, self.finish.execution(work, task))
        for work, found in batch.cached:
            batch.outcomes[work.index] = await self.finish.safely(work, self.finish.cached(work, found))


class _Finish:
    """The answer step: what a request's execution came to, as its record's outcome.

    Building an answer can itself fail (an output that does not encode): that
    is the record's failure, answered by ``fallback``, never its batch's.
    """

    def __init__(self, answers: Answers) -> None:
        self.answers = answers

    def single(self, work: Work, run: SingleRun) -> Outcome:
        """The outcome of a request run on one model."""
        try:
            if isinstance(run.output, BaseException):
                outcome = self.failure(work, run.output, spec=run.spec, job=run.job, default=run.default)
            else:
                outcome = self.answers.result(
                    work.record, work.request, run.spec, run.output, run.job, work.span,
                    attributes=work.attributes, task=_short(work.plan),
                )  # fmt: skip
        except Exception as exc:  # e.g. an output that does not encode: this record's failure
            outcome = self.fallback(work.record, work.request, exc)
        outcome.chunks = run.chunks
        return outcome

    async def cached(self, work: Work, found: Cached) -> Outcome:
        """The outcome of a request answered from the cache or by an identical request."""
        spec = work.plan.specs[0]
        try:
            output = await found.output()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the identical computation failed: so does this one
            return self.failure(work, exc, spec=spec)
        work.attributes["cache"] = found.how
        return self.answers.result(
            work.record, work.request, spec, output, None, work.span,
            attributes=work.attributes, task=_short(work.plan),
        )  # fmt: skip

    async def execution(self, work: Work, task: asyncio.Task[Execution]) -> Outcome:
        """The outcome of a fallback chain or an ensemble."""
        execution = await task
        attributes = {**work.attributes, **execution.attributes}
        members = execution.members if work.plan.kind == "ensemble" else []
        if isinstance(execution.output, BaseException):
            return self.failure(
                work, execution.output, spec=None, attributes=attributes, members=members,
                default=ErrorCode.MODEL_FAILED,
            )  # fmt: skip
        status = ResultStatus.PARTIAL if execution.partial else ResultStatus.OK
        return self.answers.result(
            work.record, work.request, execution.answered_by, execution.output, execution.job, work.span,
            status=status, attributes=attributes, members=members, task=_short(work.plan),
        )  # fmt: skip

    async def safely(self, work: Work, answer: Awaitable[Outcome]) -> Outcome:
        """``answer``, or the record's error answer when building it raised."""
        try:
            return await answer
        except Exception as exc:
            return self.fallback(work.record, work.request, exc)

    def failure(
        self,
        work: Work,
        exc: BaseException,
        *,
        spec: ModelSpec | None = None,
        job: JobResult | None = None,
        default: ErrorCode = ErrorCode.INTERNAL,
        attributes: dict[str, str] | None = None,
        members: Sequence[Member] = (),
    ) -> Outcome:
        """The error answer of an admitted request."""
        return self.answers.failure(
            work.record, exc, work.request, span=work.span, spec=spec, job=job, default=default,
            attributes=attributes if attributes is not None else work.attributes, members=members,
            task=_short(work.plan),
        )  # fmt: skip

    def fallback(self, rec: InboundRecord, request: AnyRequest | None, exc: BaseException) -> Outcome:
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


def _short(plan: Plan) -> str:
    """``classify`` for ``vision.classify``: results carry the task without the modality."""
    return plan.task.split(".", 1)[1]
