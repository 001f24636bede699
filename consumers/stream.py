"""Micro-batches pulled from Kafka, with backpressure and in-order commits.

The consumer hands out whatever is waiting (up to ``max_records`` and
``max_batch_bytes``, waiting at most ``max_wait_ms`` for more once something
arrived), counts it as in flight until the caller reports it finished, pauses
its partitions while too much is in flight (records or bytes: a stream of large
images must not fill memory just because it is few records), and commits
offsets only up to the longest finished prefix of each partition. On a
rebalance it waits (bounded) for in-flight records of revoked partitions and
commits them before letting go; then it starts a new assignment epoch
(``ownership.py``), and exactly-once drops, uncommitted, whatever of the old
epoch is still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from altlas.consumers.fetcher import Fetcher
from altlas.consumers.offsets import OffsetCommitter
from altlas.consumers.ownership import Ownership
from altlas.consumers.records import InboundRecord
from altlas.consumers.stable_offsets import seek_committed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    """How much to pull at once and how much may be in flight."""

    max_records: int = 512
    max_wait_ms: int = 5
    # Far above what the stream worker prefetches (max_batches_in_flight batches of max_records):
    # reaching it pauses the partitions, which drops what the fetcher had prefetched and drains the
    # pipeline by half.
    max_inflight: int = 16384
    max_batch_bytes: int = 64 * 1024 * 1024
    max_inflight_bytes: int = 256 * 1024 * 1024
    poll_timeout_ms: int = 200
    revoke_timeout_s: float = 20.0
    # Exactly-once: how long a new owner waits for its predecessor's open transaction (above
    # the producer's transaction timeout, after which the broker aborts it).
    stable_offsets_timeout_s: float = 90.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: BatchingConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._owner._on_revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info(
            "partitions assigned", extra={"partitions": sorted(f"{t.topic}:{t.partition}" for t in assigned)}
        )
        if assigned:
            await self._owner._start_stable(set(assigned))


class BatchingConsumer:
    """A consumer-group member that yields micro-batches and commits what finished."""

    def __init__(
        self,
        topics: Sequence[str],
        *,
        group_id: str,
        client_kwargs: dict[str, Any],
        config: BatchingConfig | None = None,
        consumer_kwargs: dict[str, Any] | None = None,
        transactional: bool = False,
    ) -> None:
        self.topics = list(topics)
        self.group_id = group_id
        config = config or BatchingConfig()
        self._consumer = AIOKafkaConsumer(
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=config.max_records,
            **client_kwargs,
            **(consumer_kwargs or {}),
        )
        self.ownership = Ownership(self._consumer)
        self._fetcher = Fetcher(self._consumer, self.ownership, config)
        # Exactly-once: offsets are committed inside the producer's transactions, never here.
        self._commits = OffsetCommitter(self._consumer, transactional=transactional)
        self._inflight = 0
        self._inflight_bytes = 0
        self._held_bytes = 0  # decoded from records in flight: released by whoever holds them
        self._paused = False
        self._settling: set[TopicPartition] = set()  # new partitions waiting for stable offsets (paused)
        self._progress = asyncio.Condition()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect and join the group."""
        await self._consumer.start()
        self._consumer.subscribe(self.topics, listener=_Rebalance(self))

    async def stop(self) -> None:
        """Commit what finished and leave the group."""
        await self.commit()
        await self._consumer.stop()

    @property
    def config(self) -> BatchingConfig:
        """How much to pull and hold: one copy, the fetcher's, so that replacing it reaches both."""
        return self._fetcher.config

    @config.setter
    def config(self, config: BatchingConfig) -> None:
        self._fetcher.config = config

    @property
    def inflight(self) -> int:
        """Records handed out and not yet finished."""
        return self._inflight

    @property
    def inflight_bytes(self) -> int:
        """Value bytes of the records in flight."""
        return self._inflight_bytes

    @property
    def held_bytes(self) -> int:
        """What was decoded from records in flight and is still held (counts against the same budget)."""
        return self._held_bytes

    def assignment(self) -> set[tuple[str, int]]:
        """Partitions this member owns now."""
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    @property
    def client(self) -> AIOKafkaConsumer:
        """The underlying aiokafka consumer (for lag queries and tests)."""
        return self._consumer

    # ------------------------------------------------------------ fetching
    async def next_batch(self) -> list[InboundRecord]:
        """The next micro-batch; empty when nothing arrived within the poll timeout."""
        await self._wait_for_capacity()
        records, nbytes = await self._fetcher.batch()
        self._commits.started(records)
        self._inflight += len(records)
        self._inflight_bytes += nbytes
        return records

    def _full(self, fraction: float = 1.0) -> bool:
        # Records finished behind an unfinished one count too: they cannot commit yet, and a crash
        # or a rebalance answers them again. Answers leave out of fetch order (one slow LLM request
        # does not hold up the rest), so without this one slow record would let the uncommitted
        # span of its partition grow without bound.
        uncommitted = max(self._inflight, self._commits.tracker.pending_count())
        return (
            uncommitted >= self.config.max_inflight * fraction
            or self._inflight_bytes + self._held_bytes >= self.config.max_inflight_bytes * fraction
        )

    async def _wait_for_capacity(self) -> None:
        if not self._full():
            return
        tps = list(self._consumer.assignment())
        self._consumer.pause(*tps)
        self._paused = True
        log.debug("backpressure: paused", extra={"inflight": self._inflight, "bytes": self._inflight_bytes})
        while self._full(0.5):
            async with self._progress:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait_for(lambda: not self._full(0.5)), 1.0)
            # Keep the group membership alive (max.poll.interval) while paused;
            # partitions assigned meanwhile are not paused, so keep what they give.
            await self._fetcher.keep_alive()
        self._consumer.resume(*(self._consumer.assignment() - self._settling))
        self._paused = False
        log.debug("backpressure: resumed", extra={"inflight": self._inflight})

    def hold(self, nbytes: int) -> None:
        """Count ``nbytes`` against the in-flight byte budget (payloads decoded from records in flight)."""
        self._held_bytes += nbytes

    async def release(self, nbytes: int) -> None:
        """Give back what ``hold`` took."""
        self._held_bytes -= nbytes
        async with self._progress:
            self._progress.notify_all()

    # ------------------------------------------------------------ completion
    async def finished(self, records: Sequence[InboundRecord]) -> None:
        """These records' outcomes are durably published; commit what became contiguous."""
        self._commits.finished(records, self.ownership.epoch)
        await self.abandon(records)
        await self._commits.commit()

    async def abandon(self, records: Sequence[InboundRecord]) -> None:
        """These records leave the in-flight count unanswered (work of a revoked assignment)."""
        self._inflight -= len(records)
        self._inflight_bytes -= sum(len(r.value) for r in records if r.value is not None)
        async with self._progress:
            self._progress.notify_all()

    async def commit(self) -> None:
        """Commit finished prefixes of owned partitions (``offsets.OffsetCommitter``)."""
        await self._commits.commit()

    async def _on_revoked(self, revoked: set[tuple[str, int]]) -> None:
        """Give in-flight records of revoked partitions a chance to finish and commit."""
        self._fetcher.drop_carried(revoked)

        def drained() -> bool:
            return all(self._commits.tracker.pending_count(tp) == 0 for tp in revoked)

        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(drained), self.config.revoke_timeout_s)
            except TimeoutError:
                log.warning("rebalance: in-flight records not finished in time; they will be redelivered")
        if not self._commits.transactional:
            await self._commits.commit_once()
        await self.ownership.revoked()  # waits for a transaction in progress to end
        self._commits.tracker.forget(revoked)
        self._fetcher.forget(revoked)

    async def _start_stable(self, assigned: set[TopicPartition]) -> None:
        """Start new partitions at their committed offsets, read correctly (``stable_offsets.py``).

        Exactly-once: where no open transaction of their last owner can still move them. Either mode:
        never from the beginning because the group coordinator was moving when aiokafka asked.
        aiokafka starts fetching from its own reading while this listener runs, so the partitions
        stay paused (from before the first await) until they are sought.
        """
        self._settling |= assigned
        self._consumer.pause(*assigned)
        try:
            await seek_committed(self._consumer, assigned, self.config.stable_offsets_timeout_s)
        finally:
            self._settling -= assigned
            if not self._paused:
                self._consumer.resume(*(assigned & self._consumer.assignment()))

    async def rewind(self) -> None:
        """Forget everything in flight and go back to the committed offsets (after an aborted transaction)."""
        self._commits.reset()
        self._inflight = 0
        self._inflight_bytes = 0
        self._fetcher.reset()  # back to the committed offsets
        assigned = list(self._consumer.assignment())
        # Not seek_to_committed: it leaves partitions without a committed offset where they are,
        # and reads a coordinator on the move as "nothing committed".
        await seek_committed(self._consumer, assigned, self.config.stable_offsets_timeout_s)
        if self._paused:
            self._consumer.resume(*(set(assigned) - self._settling))
            self._paused = False
        async with self._progress:
            self._progress.notify_all()
