"""In-order offset commits for out-of-order completion.

Records of one partition may finish in any order (different models, retries),
but Kafka stores one committed offset per partition: everything below it is
considered done. So the committable offset is one past the longest prefix of
finished records, and a slow record holds back the commit of everything after
it. That is the at-least-once rule: after a crash, nothing unfinished is
skipped; finished records above the gap may be processed again.

``OffsetTracker`` is that rule alone, with no client; ``OffsetCommitter`` feeds
it a consumer's records and commits what it allows.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from altlas.consumers.records import InboundRecord

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


@dataclass
class _PartitionState:
    pending: deque[int] = field(default_factory=deque)  # offsets in arrival order
    done: set[int] = field(default_factory=set)
    committable: int | None = None  # next offset to commit (last finished + 1)


class OffsetTracker:
    """Tracks started and finished offsets per partition."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _PartitionState] = {}
        self._committed: dict[TopicPartition, int] = {}

    def started(self, tp: TopicPartition, offset: int) -> None:
        """A record was handed out for processing (offsets arrive increasing)."""
        self._parts.setdefault(tp, _PartitionState()).pending.append(offset)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        """A record's outcome is durably published."""
        state = self._parts.get(tp)
        if state is None:
            return  # partition was revoked meanwhile; its new owner will redo it
        state.done.add(offset)
        while state.pending and state.pending[0] in state.done:
            head = state.pending.popleft()
            state.done.discard(head)
            state.committable = head + 1

    def pending_count(self, tp: TopicPartition | None = None) -> int:
        """Records started but not finished (in one partition, or in all)."""
        if tp is not None:
            state = self._parts.get(tp)
            return len(state.pending) if state else 0
        return sum(len(s.pending) for s in self._parts.values())

    def to_commit(self) -> dict[TopicPartition, int]:
        """Offsets that moved since the last ``committed`` call."""
        out = {}
        for tp, state in self._parts.items():
            if state.committable is not None and state.committable != self._committed.get(tp):
                out[tp] = state.committable
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Record that these offsets reached the broker."""
        self._committed.update(offsets)

    def forget(self, tps: set[TopicPartition]) -> None:
        """Drop partitions this consumer no longer owns."""
        for tp in tps:
            self._parts.pop(tp, None)
            self._committed.pop(tp, None)


class OffsetCommitter:
    """The commit side of one consumer: what started and finished, and committing what became contiguous.

    Commits asked for while one is in flight coalesce into one more round, so a
    burst of finished batches keeps at most one commit request outstanding.
    Exactly-once commits inside the producer's transactions instead, so
    ``commit`` does nothing there.
    """

    def __init__(self, consumer: AIOKafkaConsumer, *, transactional: bool) -> None:
        self._consumer = consumer
        self.transactional = transactional
        self.tracker = OffsetTracker()
        self._lock = asyncio.Lock()
        self._again = False

    def started(self, records: Sequence[InboundRecord]) -> None:
        """Records were handed out (in fetch order)."""
        for rec in records:
            self.tracker.started((rec.topic, rec.partition), rec.offset)

    def finished(self, records: Sequence[InboundRecord], epoch: int) -> None:
        """These records' outcomes are durably published; those of an older epoch were forgotten
        with their partitions (maybe re-fetched by the new epoch) and are not counted."""
        for rec in records:
            if rec.epoch == epoch:
                self.tracker.finished((rec.topic, rec.partition), rec.offset)

    async def commit(self) -> None:
        """Commit finished prefixes of owned partitions; concurrent calls coalesce."""
        if self.transactional:
            return
        if self._lock.locked():
            self._again = True
            return
        async with self._lock:
            self._again = True
            while self._again:
                self._again = False
                await self.commit_once()

    async def commit_once(self) -> None:
        """One commit of what moved, in either mode (a revocation's last commit)."""
        owned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        offsets = {tp: off for tp, off in self.tracker.to_commit().items() if tp in owned}
        if not offsets:
            return
        try:
            await self._consumer.commit(
                {KafkaPartition(t, p): OffsetAndMetadata(off, "") for (t, p), off in offsets.items()}
            )
        except KafkaError as exc:
            # A commit lost to a rebalance means redelivery (at-least-once), not loss.
            log.warning("offset commit failed: %s", exc, extra={"offsets": len(offsets)})
            return
        self.tracker.committed(offsets)

    def reset(self) -> None:
        """Forget everything started (after an aborted transaction: back to the committed offsets)."""
        self.tracker = OffsetTracker()
