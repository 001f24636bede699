"""Answering one request with several models: fallback chains and ensembles.

Single-model requests take the batched fast path in the processor; these
plans run per request, but every member still goes through its model's lane,
so they batch with everything else aimed at the same model. A deadline
(``params.timeout_ms``, the request's deadline, or the attempt timeout
setting) bounds each fallback attempt and the whole ensemble; stragglers are
cancelled and the answer says what was missing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from opentelemetry.trace import SpanContext

from altlas.models.errors import ModelError
from altlas.models.registry import ModelSpec
from altlas.orchestration.execution.ensembles import aggregate
from altlas.orchestration.execution.lanes import JobResult, ModelWorkers
from altlas.orchestration.execution.preparation import Decoder
from altlas.orchestration.routing.health import error_code
from altlas.orchestration.routing.planning import Plan
from altlas.pipelines.base import Prepared
from altlas.schemas.errors import AltlasError, ErrorCode, InvalidRequestError
from altlas.schemas.types import AnyRequest, Record

#: Errors after which the next model of a fallback chain is tried (input errors are not).
RETRY_NEXT = frozenset({"MODEL_FAILED", "MODEL_UNAVAILABLE", "DEADLINE_EXCEEDED"})


@dataclass
class Member:
    """One model's part in answering a request; an ensemble's result lists each one's (serving/answers.py)."""

    spec: ModelSpec
    output: Record | BaseException
    job: JobResult | None


@dataclass
class Execution:
    """The outcome of a multi-model plan."""

    output: Record | BaseException
    answered_by: ModelSpec | None
    job: JobResult | None
    members: list[Member] = field(default_factory=list)
    partial: bool = False
    attributes: dict[str, str] = field(default_factory=dict)


class DeadlineExceeded(AltlasError):
    """A model did not answer in time."""

    code = ErrorCode.DEADLINE_EXCEEDED
    retriable = True


class MultiModelExecutor:
    """Runs fallback and ensemble plans."""

    def __init__(self, workers: ModelWorkers, decoder: Decoder, attempt_timeout_s: float) -> None:
        self.workers = workers
        self.decoder = decoder
        self.attempt_timeout_s = attempt_timeout_s

    async def run(self, request: AnyRequest, plan: Plan, span: SpanContext | None) -> Execution:
        """Execute a fallback or ensemble plan."""
        if plan.kind == "ensemble":
            return await self._ensemble(request, plan, span)
        return await self._fallback(request, plan, span)

    def budget(self, request: AnyRequest, spec: ModelSpec | None = None) -> float:
        """Seconds this request may still spend (a model's ``metadata.timeout_s`` overrides the setting)."""
        budget = self.attempt_timeout_s
        if spec is not None and spec.metadata.timeout_s is not None:
            budget = spec.metadata.timeout_s
        own = _request_budget(request)
        return max(0.0, budget if own is None else min(budget, own))

    async def _attempt(
        self,
        request: AnyRequest,
        plan: Plan,
        spec: ModelSpec,
        span: SpanContext | None,
        timeout_s: float,
        prepared: Prepared | BaseException | None = None,
    ) -> Member:
        if prepared is None:
            try:
                prepared = await self.decoder.prepare((plan.pipeline, request.payload, request.params, spec))
            except Exception as exc:
                prepared = exc
        if isinstance(prepared, BaseException):  # the payload's fault, as on the single-model path
            return Member(spec, _input_error(prepared), None)
        future = self.workers.submit(
            spec, plan.pipeline, [prepared], [span], request_ids=[request.request_id]
        )
        try:
            (job,) = await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            future.cancel()  # still queued: the lane skips it; already running: its answer is dropped
            error = DeadlineExceeded(f"{spec.key} gave no answer within {timeout_s:.2f}s")
            self.workers.health_failure(spec, error)
            return Member(spec, error, None)
        return Member(spec, job.output, job)

    async def _fallback(self, request: AnyRequest, plan: Plan, span: SpanContext | None) -> Execution:
        tried: list[Member] = []
        # The request's own limits bound the whole chain; a model's timeout bounds only its attempt,
        # so a model that times out leaves the rest of the request's time to the next one.
        own = _request_budget(request)
        deadline = None if own is None else time.monotonic() + own
        health = self.workers.health
        for spec in plan.specs:
            if health is not None and health.is_open(spec):
                tried.append(
                    Member(
                        spec, AltlasError(f"{spec.key}: circuit open", code=ErrorCode.MODEL_UNAVAILABLE), None
                    )
                )
                continue
            remaining = self.budget(request, spec)
            if deadline is not None:
                remaining = min(remaining, deadline - time.monotonic())
            if remaining <= 0:
                break
            member = await self._attempt(request, plan, spec, span, remaining)
            tried.append(member)
            if not isinstance(member.output, BaseException):
                break
            if error_code(member.output) not in RETRY_NEXT:
                break  # bad input fails on every model: do not try the rest
            if self.workers.in_flight.ended(request.request_id):
                break  # a model command ended the request: no other model takes it up
        failed = [m for m in tried if isinstance(m.output, BaseException)]
        attributes = {"fallback_tried": ",".join(m.spec.key for m in tried)}
        if failed:
            attributes["fallback_failed"] = "; ".join(f"{m.spec.key}: {error_code(m.output)}" for m in failed)  # type: ignore[arg-type]
        last = tried[-1] if tried else None
        if last is None or isinstance(last.output, BaseException):
            error = last.output if last is not None else DeadlineExceeded("no time left for any model")
            if not isinstance(error, AltlasError | ModelError):
                error = AltlasError(str(error), code=ErrorCode.MODEL_FAILED)
            chain = " -> ".join(f"{m.spec.key} ({error_code(m.output)})" for m in failed)  # type: ignore[arg-type]
            if chain and isinstance(error, AltlasError):
                error = AltlasError(f"every model of the fallback chain failed: {chain}", code=error.code)
            return Execution(error, None, None, tried, False, attributes)
        return Execution(last.output, last.spec, last.job, tried, False, attributes)

    async def _ensemble(self, request: AnyRequest, plan: Plan, span: SpanContext | None) -> Execution:
        # Every member's input from one decode of the payload (each model still preprocesses its own),
        # on a decode thread, within the decode time limit like any other payload.
        prepared = await self.decoder.prepare_together(
            [(plan.pipeline, request.payload, request.params, spec) for spec in plan.specs]
        )
        tasks = [
            asyncio.create_task(self._attempt(request, plan, spec, span, self.budget(request, spec), item))
            for spec, item in zip(plan.specs, prepared, strict=True)
        ]
        members = list(await asyncio.gather(*tasks))
        good = [m for m in members if not isinstance(m.output, BaseException)]
        missed = [m for m in members if isinstance(m.output, DeadlineExceeded)]
        attributes = {"ensemble_size": str(len(members)), "ensemble_answered": str(len(good))}
        if not good:
            first_error = members[0].output
            assert isinstance(first_error, BaseException)
            return Execution(first_error, None, None, members, False, attributes)
        try:
            combined = aggregate([m.output for m in good], request.params)  # type: ignore[misc]
        except Exception as exc:
            return Execution(exc, None, None, members, False, attributes)
        lead = good[0]
        return Execution(combined, lead.spec, lead.job, members, bool(missed), attributes)


def _request_budget(request: AnyRequest) -> float | None:
    """Seconds left by the request's own limits (``params.timeout_ms``, its deadline); None: it sets none."""
    if not request.params and request.deadline is None:  # most requests: nothing to narrow it
        return None
    own: float | None = None
    timeout_ms = request.params.get("timeout_ms")
    if isinstance(timeout_ms, int | float) and not isinstance(timeout_ms, bool) and timeout_ms > 0:
        own = timeout_ms / 1000
    if request.deadline is not None:
        left = (request.deadline - datetime.now(UTC)).total_seconds()
        own = left if own is None else min(own, left)
    return own


def _input_error(exc: BaseException) -> BaseException:
    """A preparation failure as the request's error: an unknown exception would read as MODEL_FAILED,
    which sends a fallback chain on to decode the same payload with its next model."""
    if isinstance(exc, AltlasError | ModelError):
        return exc
    return InvalidRequestError(f"{type(exc).__name__}: {exc}", code=ErrorCode.INVALID_PAYLOAD)
