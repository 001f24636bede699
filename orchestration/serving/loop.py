"""The loop of one modality: pull a micro-batch, answer it, hand it to its delivery.

Batches overlap: while batch N waits for its acknowledgements (or its
transaction), batch N+1 is already being decoded and run, up to
``max_batches_in_flight``. Each batch is chained to the earlier batches it
shares an order key with (the delivery says which keys, delivery.py); the rest
pass it. What happens to an answered batch (publish, then commit) is the
delivery's (delivery.py: at-least-once; exactly_once.py: one transaction per
window of batches), chosen here once, at construction.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Hashable

from altlas.consumers.records import InboundRecord
from altlas.consumers.stream import BatchingConsumer
from altlas.orchestration.observability.liveness import Progress
from altlas.orchestration.serving.delivery import AtLeastOnce, Batch, Delivery
from altlas.orchestration.serving.exactly_once import ExactlyOnce
from altlas.orchestration.serving.outcomes import Outcome
from altlas.orchestration.serving.processor import RequestProcessor
from altlas.orchestration.serving.replacements import Replacements
from altlas.producers.publisher import Publisher
from altlas.producers.transactions import TransactionalPublisher

log = logging.getLogger(__name__)


class StreamWorker:
    """Runs one modality's consume -> process -> publish -> commit loop."""

    def __init__(
        self,
        consumer: BatchingConsumer,
        processor: RequestProcessor,
        publisher: Publisher,
        *,
        max_batches_in_flight: int = 8,
        retry_backoff_s: float = 0.5,
        transactions: TransactionalPublisher | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        self.consumer = consumer
        self.processor = processor
        self.publisher = publisher
        self.transactions = transactions
        self.max_message_bytes = max_message_bytes
        self.max_batches_in_flight = max_batches_in_flight
        self.retry_backoff_s = retry_backoff_s
        self.progress = Progress()
        self._tasks: set[asyncio.Task[None]] = set()
        # Order key -> ``queued`` of the latest batch in flight holding it (see ``_chain``).
        self._latest: dict[Hashable, asyncio.Event] = {}
        replacements = Replacements(processor, publisher, max_message_bytes)
        self.delivery: Delivery = (
            AtLeastOnce(consumer, publisher, replacements=replacements, progress=self.progress)
            if transactions is None
            else ExactlyOnce(
                consumer,
                transactions,
                replacements=replacements,
                progress=self.progress,
                max_backlog=max_batches_in_flight,
                retry_backoff_s=retry_backoff_s,
            )
        )

    @property
    def fatal(self) -> BaseException | None:
        """Why this worker stopped (or must stop): ``run`` raises it."""
        return self.delivery.fatal

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: fetch and hand batches to concurrent tasks."""
        self.delivery.start()
        try:
            await self._fetch_loop(stop)
        finally:
            await self.delivery.stop(self._tasks)

    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.delivery.fatal is not None:
                raise self.delivery.fatal
            if not await self.delivery.make_room(self._tasks):
                continue
            if len(self._tasks) >= self.max_batches_in_flight:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            records = await self.consumer.next_batch()
            if not records:
                continue
            keys = self.delivery.order_keys(records)
            batch = Batch(records, self.progress.started(len(records)), self._chain(keys))
            for key in keys:
                self._latest[key] = batch.queued
            task = asyncio.create_task(self._serve(batch))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._ended, batch=batch, keys=keys))

    def _chain(self, keys: set[Hashable]) -> tuple[asyncio.Event, ...]:
        """The batches in flight that a batch with these order keys must leave after."""
        latest = self._latest
        return tuple({e for key in keys if (e := latest.get(key)) is not None and not e.is_set()})

    def _ended(self, task: asyncio.Task[None], *, batch: Batch, keys: set[Hashable]) -> None:
        """However a batch ended (a task cancelled before it ran included), it holds up no other."""
        self._tasks.discard(task)
        batch.queued.set()
        if task.cancelled():  # maybe before ``_serve`` ran, which says so itself otherwise
            self.progress.dropped(batch.token)
        for key in keys:
            if self._latest.get(key) is batch.queued:
                del self._latest[key]

    async def drain(self, timeout_s: float) -> bool:
        """Wait for in-flight batches; cancel what is left after ``timeout_s``."""
        if not self._tasks:
            return True
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return not pending

    async def _serve(self, batch: Batch) -> None:
        """Answer a batch, then deliver it."""
        try:
            outcomes = await self._answer(batch.records)
        except BaseException:  # cancelled (``_answer`` retries everything else)
            batch.queued.set()  # never hold up later batches
            self.progress.dropped(batch.token)
            raise
        await self.delivery.deliver(batch, outcomes)

    async def _answer(self, records: list[InboundRecord]) -> list[Outcome]:
        """Outcomes for a batch, retried with backoff while a dependency is down.

        Retrying (and holding the commit) rather than answering with errors is
        what keeps a registry outage from turning good requests into failures.
        """
        backoff = self.retry_backoff_s
        while True:
            try:
                return await self.processor.process(records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "cannot answer a batch of %d yet (%s); retrying in %.1fs", len(records), exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
