"""The cache gate: a single-model request is answered from the cache, by an identical request
already running, or computed (and then stored for the next one).

The cache is an optimisation, so it never fails a request: a cache that cannot read an entry is a
miss, and requests whose answer is random or streamed pass by it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from altlas.orchestration.execution.cache import ResultCache, cache_key
from altlas.orchestration.routing.planning import Plan
from altlas.schemas.types import AnyRequest, Record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cached:
    """An answer that needs no model run: stored (``how`` = "hit") or being computed ("shared")."""

    value: Record | asyncio.Future[Record]
    how: str

    async def output(self) -> Record:
        """The answer; raises the identical computation's failure."""
        if not isinstance(self.value, asyncio.Future):
            return self.value
        # Shielded: cancelling this batch (shutdown, a rewind) must not cancel the computation
        # other requests share, nor be taken for its failure.
        return await asyncio.shield(self.value)


@dataclass(frozen=True)
class Miss:
    """This request computes the answer: ``store`` (or ``abandon``) it under ``key`` afterwards."""

    key: str


class CacheGate:
    """The cache between admitted single-model requests and their model."""

    def __init__(self, cache: ResultCache | None) -> None:
        self.cache = cache

    async def lookup(self, request: AnyRequest, plan: Plan) -> Cached | Miss | None:
        """The cached or shared answer; a Miss registers the caller as computing; None passes by."""
        cache = self.cache
        if cache is None or request.params.get("cache") is False or request.params.get("stream") is True:
            return None
        deterministic = getattr(plan.pipeline, "deterministic", None)
        if deterministic is not None and not deterministic(request.params, plan.specs[0]):
            return None  # a random answer is not the answer: never reuse it
        key = cache_key(request.payload, plan.task, plan.specs[0], request.params)
        try:
            state, value = await cache.lookup(key)
        except Exception as exc:  # the cache is an optimisation: when it fails, compute
            log.warning("cache lookup failed (%s); computing", type(exc).__name__)
            return None
        if state == "miss":
            return Miss(key)
        assert value is not None
        return Cached(value, state)

    async def store(self, key: str | None, output: Record | BaseException) -> None:
        """Keep a computed answer and wake identical waiters; a failure is passed on, never stored."""
        if key is None or self.cache is None:
            return
        if isinstance(output, BaseException):
            self.cache.abandon(key, output)
        else:
            await self.cache.complete(key, output)

    def abandon(self, keys: Iterable[str | None], error: BaseException) -> None:
        """Give up computations that will not finish, so identical waiters are not left hanging."""
        if self.cache is None:
            return
        for key in keys:
            if key is not None:
                self.cache.abandon(key, error)
