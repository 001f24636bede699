"""How an answered batch leaves and its offsets commit: one protocol, one implementation per guarantee.

The stream loop (loop.py) fetches and answers batches and hands each to its
``Delivery``; the delivery guarantee is chosen once, when the loop is built,
never tested batch by batch. Batches overlap: while batch N waits for its
acknowledgements, batch N+1 is already being answered. A batch's messages are
queued only after those of the earlier batches it shares an *order key* with
(``Batch.its_turn``); each delivery says what its order keys are
(``order_keys``):
- at-least-once: the request's Kafka key, so results for one key
  leave in the order their requests came, and nothing else waits: an LLM
  request generating for a minute does not hold up the answer of a short one
  fetched after it (offsets still commit only as contiguous finished prefixes);
- exactly-once: the topic and partition, because a transaction commits a
  partition's offsets up to the last record it carries, so no batch may reach
  the committer before an earlier one of the same partition.

At-least-once (``AtLeastOnce``, the default): a batch's offsets are marked
finished only when every message answering it was acknowledged, and the
consumer commits only contiguous finished prefixes. A message the broker
refuses for good is replaced (replacements.py), never dropped while any
replacement can still go out. Exactly-once lives in exactly_once.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Set
from dataclasses import dataclass, field
from typing import Any, Protocol

from altlas.consumers.records import InboundRecord
from altlas.consumers.stream import BatchingConsumer
from altlas.orchestration.observability.liveness import Progress
from altlas.orchestration.serving.outcomes import Outcome
from altlas.orchestration.serving.replacements import Replacements
from altlas.producers.publisher import OutboundMessage, PermanentSendError, Publisher
from altlas.producers.swap import retrieve_error
from altlas.schemas.errors import AltlasError

log = logging.getLogger(__name__)

InFlight = Set["asyncio.Task[None]"]


@dataclass(eq=False)
class Batch:
    """One fetched batch on its way out, after the earlier batches it shares an order key with."""

    records: list[InboundRecord]
    token: int  # its Progress token: finished once its answers are durable, else dropped
    after: tuple[asyncio.Event, ...]  # those earlier batches' ``queued``
    queued: asyncio.Event = field(default_factory=asyncio.Event)  # this one has (or gave up)

    async def its_turn(self) -> None:
        """Wait until every earlier batch with one of this batch's order keys has queued its messages."""
        for event in self.after:
            await event.wait()


class Delivery(Protocol):
    """What the stream loop asks of a delivery guarantee."""

    #: Why this instance must stop; the loop raises it (and is restarted on the committed offsets).
    fatal: BaseException | None

    def start(self) -> None:
        """Begin what runs beside the batches, if anything."""

    def order_keys(self, records: list[InboundRecord]) -> set[Hashable]:
        """What must leave in fetch order: a batch waits for earlier batches with any of these."""

    async def make_room(self, in_flight: InFlight) -> bool:
        """Whether the loop may fetch now; False once it has waited: the loop looks again."""

    async def deliver(self, batch: Batch, outcomes: list[Outcome]) -> None:
        """Publish after the earlier batches sharing its order keys; then its offsets may commit.

        Sets ``batch.queued`` whatever happens, and finishes or drops ``batch.token``.
        """

    async def stop(self, in_flight: InFlight) -> None:
        """When the loop ends: settle what is still in flight."""


class AtLeastOnce:
    """Publish after earlier batches of the same keys; offsets finish once every answer is acknowledged."""

    def __init__(
        self,
        consumer: BatchingConsumer,
        publisher: Publisher,
        *,
        replacements: Replacements,
        progress: Progress,
    ) -> None:
        self.consumer = consumer
        self.publisher = publisher
        self.replacements = replacements
        self.progress = progress
        self.fatal: BaseException | None = None

    def start(self) -> None:
        """Nothing runs beside the batches: each one publishes and finishes itself."""

    async def make_room(self, in_flight: InFlight) -> bool:
        """Always: only the number of batches in flight (the loop's own limit) holds fetching."""
        return True

    def order_keys(self, records: list[InboundRecord]) -> set[Hashable]:
        """Per key: the order Kafka promises producers (records without a key promise none)."""
        keys: set[Hashable] = {rec.key for rec in records}
        keys.discard(None)
        return keys

    async def stop(self, in_flight: InFlight) -> None:
        """Batches still in flight are left to the service's drain, which bounds the wait."""

    async def deliver(self, batch: Batch, outcomes: list[Outcome]) -> None:
        """Publish, wait for the acknowledgements, then mark the batch's records finished."""
        try:
            await self._publish(batch, outcomes)
        except asyncio.CancelledError:
            self.progress.dropped(batch.token)
            raise
        except Exception as exc:
            # Its records stay started, so their partitions could never commit again: stopping (and
            # being restarted on the committed offsets) is the only way on that loses nothing.
            self.progress.dropped(batch.token)
            log.error(
                "a batch failed while publishing (%s: %s); stopping this instance", type(exc).__name__, exc
            )
            self.fatal = self.fatal or exc
            raise
        self.progress.finished(batch.token)

    async def _publish(self, batch: Batch, outcomes: list[Outcome]) -> None:
        try:
            chunk_acks = [ack for o in outcomes if o.chunks is not None for ack in await o.chunks.close()]
            await batch.its_turn()
            sends = [
                (outcome, msg, await self._enqueue(msg)) for outcome in outcomes for msg in outcome.messages
            ]
        finally:
            batch.queued.set()  # never hold up later batches, even when this one failed
        # Wait for all acks at once, for at most the send time limit; only the rare message that
        # failed or is still waiting gets individual handling (a coroutine per message just to await
        # its future cost more than producing it): in batch order within a topic, topics at once, so
        # many bad reply topics cost one time limit, not one each.
        limit = self.publisher.config.send_timeout_s
        if sends:
            await asyncio.wait([f for _, _, f in sends], timeout=limit)
        retry: dict[str, list[tuple[Outcome, OutboundMessage, asyncio.Future[Any]]]] = {}
        for outcome, msg, future in sends:
            if not future.done() or future.cancelled() or future.exception() is not None:
                retry.setdefault(msg.topic, []).append((outcome, msg, future))
        if retry:
            await asyncio.gather(*(self._deliver_in_order(items) for items in retry.values()))
        if chunk_acks:  # streamed chunks: best effort, and never longer than the time limit
            for ack in chunk_acks:
                ack.add_done_callback(retrieve_error)
            await asyncio.wait(chunk_acks, timeout=limit)
        await self.consumer.finished(batch.records)

    async def _enqueue(self, msg: OutboundMessage) -> asyncio.Future[Any]:
        try:
            return await self.publisher.enqueue(msg)
        except Exception as exc:  # e.g. too large: raised at send time, not on the future
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    async def _deliver_in_order(
        self, items: list[tuple[Outcome, OutboundMessage, asyncio.Future[Any]]]
    ) -> None:
        for outcome, msg, future in items:
            await self._deliver(outcome, msg, future)

    async def _deliver(self, outcome: Outcome, msg: OutboundMessage, future: asyncio.Future[Any]) -> None:
        """Wait for the ack; a message the broker refuses for good is replaced, never dropped."""
        try:
            await self.publisher.deliver(msg, future)
            return
        except PermanentSendError as exc:
            reason, code = str(exc), exc.code
        log.warning("cannot publish to %s (%s); sending an error result instead", msg.topic, reason)
        fallbacks = self.replacements
        if msg.topic == fallbacks.dead_letter_topic:
            # The dead letter itself did not fit: keep everything but the original value.
            assert outcome.error is not None
            await self._deliver_last_resort(fallbacks.slim_dead_letter(outcome, outcome.error))
            return
        # The error result goes where the request wanted it when that topic still takes messages,
        # else to the results topic; the dead letter loses the original value only if it must.
        error = AltlasError(f"result could not be published: {reason}", code=code)
        replacement = fallbacks.failure(outcome, error)
        for extra in replacement.messages:
            try:
                await self.publisher.deliver(extra)
                continue
            except PermanentSendError:
                pass
            info = replacement.error
            assert info is not None
            if extra.topic != fallbacks.dead_letter_topic:
                fallback = fallbacks.failure(outcome, error, default_topic=True)
                if fallback.messages and fallback.messages[0].topic != extra.topic:
                    await self._deliver_last_resort(fallback.messages[0])
                continue
            await self._deliver_last_resort(fallbacks.slim_dead_letter(outcome, info))

    async def _deliver_last_resort(self, msg: OutboundMessage) -> None:
        try:
            await self.publisher.deliver(msg)
        except PermanentSendError as exc:
            log.error("dropping an unpublishable answer for %s: %s", msg.topic, exc)
