"""Exactly-once delivery: a batch's answers and its offsets go out in one transaction.

Answered batches queue, in order per partition, for one committer task. When a
transaction aborts, every later batch in flight is dropped and the consumer
rewinds to the committed offsets, so the same records are answered again and
only one answer ever becomes visible to ``read_committed`` readers.

A transaction must not fail on an answer that could never be sent (too large,
a refused topic): every message is checked, and replaced when it must be
(replacements.py), before it joins one.

In a consumer group, no transaction carries answers or offsets of a partition
this member gave up: only batches fetched in the consumer's current assignment
epoch go in, and a revocation waits for the transaction in progress
(consumers/ownership.py). Another instance fencing this one's transactional id
stops this instance.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import NamedTuple

from altlas.consumers.records import InboundRecord
from altlas.consumers.stream import BatchingConsumer
from altlas.orchestration.observability.liveness import Progress
from altlas.orchestration.serving.delivery import Batch, InFlight
from altlas.orchestration.serving.outcomes import Outcome
from altlas.orchestration.serving.replacements import Replacements
from altlas.producers.publisher import OutboundMessage
from altlas.producers.transactions import Fenced, TransactionAborted, TransactionalPublisher

log = logging.getLogger(__name__)

#: How long stopping waits for batches in flight, then for their commit.
_STOP_WAIT_S = 30.0


class _Answered(NamedTuple):
    """A batch ready for the committer: what it publishes, and the records whose offsets it commits."""

    messages: list[OutboundMessage]
    records: list[InboundRecord]
    token: int


class ExactlyOnce:
    """Answered batches, in order per partition, to one committer; one transaction per window of them."""

    def __init__(
        self,
        consumer: BatchingConsumer,
        transactions: TransactionalPublisher,
        *,
        replacements: Replacements,
        progress: Progress,
        max_backlog: int = 8,
        retry_backoff_s: float = 0.5,
    ) -> None:
        self.consumer = consumer
        self.transactions = transactions
        self.replacements = replacements
        self.progress = progress
        self.max_backlog = max_backlog
        self.retry_backoff_s = retry_backoff_s
        self.fatal: BaseException | None = None
        self._work: list[_Answered] = []
        self._rewind_needed = False
        self._rewind_backoff = retry_backoff_s
        self._committer: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # work is waiting for the committer
        self._taken = asyncio.Event()  # the committer took the waiting work
        self._idle = asyncio.Event()  # nothing waiting, nothing being committed
        self._idle.set()

    def start(self) -> None:
        """Start the committer."""
        self._committer = asyncio.create_task(self._commit_loop())
        self._committer.add_done_callback(self._committer_done)

    async def make_room(self, in_flight: InFlight) -> bool:
        """Rewind after an aborted transaction; hold fetching while the committer lags behind."""
        if self._rewind_needed:
            await self._rewind(in_flight)
            return False
        if len(self._work) >= self.max_backlog:
            self._taken.clear()  # a commit is slow: stop fetching until it takes the backlog
            await self._taken.wait()
            return False
        return True

    def order_keys(self, records: list[InboundRecord]) -> set[Hashable]:
        """Per partition: a transaction commits a partition's offsets up to its last record there."""
        return {(rec.topic, rec.partition) for rec in records}

    async def deliver(self, batch: Batch, outcomes: list[Outcome]) -> None:
        """Hand an answered batch to the committer after the earlier batches of its partitions."""
        handed = False
        try:
            for outcome in outcomes:  # streamed chunks travel outside transactions (best effort)
                if outcome.chunks is not None:
                    await outcome.chunks.close()
            await batch.its_turn()
            if self._rewind_needed:
                return  # an earlier batch aborted: these records will be fetched and answered again
            messages = await self.replacements.fit_all(outcomes)
            self._work.append(_Answered(messages, batch.records, batch.token))
            handed = True
            self._idle.clear()
            self._ready.set()
        except Exception as exc:
            # A later batch of its partitions could otherwise commit past these records unanswered:
            # stop, and be restarted on the committed offsets (the same rule as at-least-once).
            log.error("a batch failed before its transaction (%s: %s); stopping", type(exc).__name__, exc)
            self.fatal = self.fatal or exc
            raise
        finally:
            batch.queued.set()
            if not handed:
                self.progress.dropped(batch.token)

    async def stop(self, in_flight: InFlight) -> None:
        """Let batches still in flight reach the committer, then stop it."""
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=_STOP_WAIT_S)
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=_STOP_WAIT_S)
        except TimeoutError:
            left = len(self._work)
            log.warning("stopping with %d batches uncommitted; they will be answered again", left)
        if self._committer is not None:
            self._committer.cancel()
            await asyncio.gather(self._committer, return_exceptions=True)

    def _committer_done(self, task: asyncio.Task[None]) -> None:
        """A committer that died unexpectedly stops the worker rather than stalling it."""
        if not task.cancelled() and task.exception() is not None and self.fatal is None:
            self.fatal = task.exception()
        self._taken.set()

    async def _commit_loop(self) -> None:
        """One transaction per window of finished batches, never one per batch.

        A transaction costs tens of milliseconds of broker round trips whatever
        its size, so committing batch by batch queues them up and latency grows
        with the queue. Instead, each transaction takes every batch that finished
        while the previous one was committing: at most one transaction of waiting.
        """
        while True:
            await self._ready.wait()
            self._ready.clear()
            work, self._work = self._work, []
            self._taken.set()
            if work and not self._rewind_needed:
                await self._commit(work)
            if not self._work:
                self._idle.set()

    async def _commit(self, work: list[_Answered]) -> None:
        """Publish these batches' answers and commit their offsets in one transaction.

        Only batches fetched in the consumer's current assignment epoch go in, and a
        revocation waits for the transaction to end (consumers/ownership.py): no
        transaction carries answers or offsets of a partition this member gave up.
        """
        if self.fatal is not None:
            return
        ownership = self.consumer.ownership
        async with ownership.committing():
            stale = [w for w in work if not ownership.current(w.records[0].epoch)]
            for answered in stale:
                await self.consumer.abandon(answered.records)
                self.progress.dropped(answered.token)
            if stale:
                log.info("dropped %d batches of revoked partitions uncommitted", len(stale))
            work = [w for w in work if ownership.current(w.records[0].epoch)]
            if work:
                await self._commit_owned(work)

    async def _commit_owned(self, work: list[_Answered]) -> None:
        messages = [m for answered in work for m in answered.messages]
        offsets: dict[tuple[str, int], int] = {}
        for answered in work:
            for rec in answered.records:
                tp = (rec.topic, rec.partition)
                offsets[tp] = max(offsets.get(tp, 0), rec.offset + 1)
        try:
            await self.transactions.publish(
                messages, offsets, self.consumer.group_id, confirm=self.consumer.ownership.confirm
            )
        except TransactionAborted:
            self._rewind_needed = True
            return
        except Fenced as exc:
            log.error("%s; stopping this instance", exc)
            self.fatal = exc
            return
        self._rewind_backoff = self.retry_backoff_s
        for answered in work:
            await self.consumer.finished(answered.records)
            self.progress.finished(answered.token)

    async def _rewind(self, in_flight: InFlight) -> None:
        """Drop every batch in flight and resume from the committed offsets."""
        current = asyncio.current_task()
        others = [t for t in in_flight if t is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self._work = []
        self.progress.drop_all()
        self._idle.set()
        self._taken.set()
        await asyncio.sleep(self._rewind_backoff)
        self._rewind_backoff = min(self._rewind_backoff * 2, 30.0)
        await self.consumer.rewind()
        self._rewind_needed = False
        log.warning("rewound to the committed offsets after an aborted transaction")
