"""The single-model fast path: a batch's requests for one model run as one ticket on its lane.

Payloads are decoded together on the decode threads, then requests that share a model and a time
budget (all of them, unless requests set deadlines) are queued on that model's lane as one ticket:
one future and one wait for the lot. Each ticket is waited for until its deadline, after which it
is cancelled and its requests answered DEADLINE_EXCEEDED. Computed answers go through the cache
gate, so identical requests waiting on them are woken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.trace import Span, SpanContext

from altlas.consumers.records import InboundRecord
from altlas.models.registry import ModelSpec
from altlas.orchestration.execution.cache_gate import CacheGate
from altlas.orchestration.execution.chunks import ChunkStream
from altlas.orchestration.execution.lanes import JobResult, ModelWorkers
from altlas.orchestration.execution.multi_model import DeadlineExceeded
from altlas.orchestration.execution.preparation import Decoder
from altlas.orchestration.routing.planning import Plan
from altlas.pipelines.base import Prepared, held_bytes
from altlas.schemas.errors import ErrorCode
from altlas.schemas.types import AnyRequest, Record

__all__ = ["ByteBudget", "SingleModelExecutor", "SingleRun", "Work", "await_with_deadlines"]


class ByteBudget(Protocol):
    """The in-flight byte budget of the consumer feeding this processor."""

    def hold(self, nbytes: int) -> None: ...

    async def release(self, nbytes: int) -> None: ...


@dataclass
class Work:
    """One decoded, planned request on its way through the batch."""

    index: int
    record: InboundRecord
    request: AnyRequest
    plan: Plan
    span: Span | None
    cache_key: str | None = None  # set while this request computes an answer others may wait on
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class SingleRun:
    """What running one request on its model came to."""

    output: Record | BaseException
    spec: ModelSpec | None  # None when the payload did not decode: no model was involved
    job: JobResult | None = None
    default: ErrorCode = ErrorCode.INTERNAL  # the error code of an exception that carries none
    chunks: ChunkStream | None = None


@dataclass
class _Group:
    """Requests of one batch that share a model and a deadline: submitted to its lane as one ticket."""

    deadline: float  # event-loop time
    works: list[Work]
    items: list[Prepared]
    spans: list[SpanContext | None]
    stream: ChunkStream | None = None  # a streamed request's chunks (it is submitted alone)


class SingleModelExecutor:
    """Runs the single-model requests of a batch on their models' lanes."""

    def __init__(
        self,
        workers: ModelWorkers,
        decoder: Decoder,
        gate: CacheGate,
        *,
        seconds: Callable[[AnyRequest, ModelSpec], float],
        budget: ByteBudget | None = None,
    ) -> None:
        self.workers = workers
        self.decoder = decoder
        self.gate = gate
        self.seconds = seconds  # the time budget of a request on a model
        self.budget = budget

    async def run(self, singles: list[Work], open_stream: Callable[[Work], ChunkStream]) -> list[SingleRun]:
        """One run per request, same order; ``open_stream`` publishes a streamed request's chunks."""
        prepared = await self.decoder.prepare_many(
            [(w.plan.pipeline, w.request.payload, w.request.params, w.plan.specs[0]) for w in singles]
        )
        held = sum(held_bytes(p.data) for p in prepared if isinstance(p, Prepared)) if self.budget else 0
        if self.budget is not None:
            self.budget.hold(held)  # decoded inputs count like the records until their model has run
        try:
            return await self._run_prepared(singles, prepared, open_stream)
        finally:
            if self.budget is not None:
                await self.budget.release(held)

    async def _run_prepared(
        self,
        singles: list[Work],
        prepared: list[Prepared | BaseException],
        open_stream: Callable[[Work], ChunkStream],
    ) -> list[SingleRun]:
        runs: dict[int, SingleRun] = {}
        groups = await self._group(singles, prepared, runs, open_stream)
        futures = [
            self.workers.submit(
                g.works[0].plan.specs[0],
                g.works[0].plan.pipeline,
                g.items,
                g.spans,
                g.stream.push if g.stream is not None else None,
                request_ids=[w.request.request_id for w in g.works],
            )
            for g in groups
        ]
        timed_out = await await_with_deadlines([g.deadline for g in groups], futures)
        for n, (group, future) in enumerate(zip(groups, futures, strict=True)):
            spec = group.works[0].plan.specs[0]
            if n in timed_out:
                error = DeadlineExceeded(f"{spec.key} gave no answer within the request's time budget")
                for work in group.works:
                    self.workers.health_failure(spec, error)
                    await self._store(work, error)
                    runs[work.index] = SingleRun(error, spec)
                continue
            for work, job in zip(group.works, future.result(), strict=True):
                await self._store(work, job.output)
                if job.attributes:  # per-request figures (time to first token, tokens/s, partial text)
                    work.attributes.update(job.attributes)
                runs[work.index] = SingleRun(job.output, spec, job, ErrorCode.MODEL_FAILED, group.stream)
        return [runs[w.index] for w in singles]

    async def _group(
        self,
        singles: list[Work],
        prepared: list[Prepared | BaseException],
        runs: dict[int, SingleRun],
        open_stream: Callable[[Work], ChunkStream],
    ) -> list[_Group]:
        """The tickets to submit; payloads that did not decode are answered in ``runs`` instead."""
        now = asyncio.get_running_loop().time()
        by_key: dict[tuple[str, str, float], _Group] = {}
        groups: list[_Group] = []
        for work, prep in zip(singles, prepared, strict=True):
            spec = work.plan.specs[0]
            if isinstance(prep, BaseException):
                await self._store(work, prep)
                runs[work.index] = SingleRun(prep, None, default=ErrorCode.INVALID_PAYLOAD)
                continue
            ctx = work.span.get_span_context() if work.span is not None else None
            seconds = self.seconds(work.request, spec)
            prep.deadline = now + seconds  # loop.time() is time.monotonic(): the runtime stops there
            if prep.params.get("stream") is True and hasattr(work.plan.pipeline, "run_stream"):
                groups.append(_Group(now + seconds, [work], [prep], [ctx], open_stream(work)))
                continue
            key = (spec.key, work.plan.pipeline.task, seconds)
            group = by_key.get(key)
            if group is None:
                group = by_key[key] = _Group(now + seconds, [], [], [])
                groups.append(group)
            group.works.append(work)
            group.items.append(prep)
            group.spans.append(ctx)
        return groups

    async def _store(self, work: Work, output: Record | BaseException) -> None:
        key, work.cache_key = work.cache_key, None
        await self.gate.store(key, output)


async def await_with_deadlines(
    deadlines: list[float], futures: list[asyncio.Future[list[JobResult]]]
) -> set[int]:
    """Wait for the futures, each until its deadline; returns the indexes that ran out (cancelled)."""
    loop = asyncio.get_running_loop()
    pending = set(range(len(futures)))
    timed_out: set[int] = set()
    for deadline in sorted(set(deadlines)):
        if not pending:
            break
        _, still = await asyncio.wait([futures[n] for n in pending], timeout=max(0.0, deadline - loop.time()))
        pending = {n for n in pending if futures[n] in still}
        for n in [n for n in pending if deadlines[n] <= deadline]:
            futures[n].cancel()
            timed_out.add(n)
            pending.discard(n)
    return timed_out
