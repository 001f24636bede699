"""What the consumer hands out next: polls gathered into one micro-batch.

A batch waits at most ``max_wait_ms`` for more once something arrived, so a
trickle still fills batches without adding latency to a lone record. A batch
stays within ``max_batch_bytes``: what does not fit is carried over to the next
one, never dropped, and so is what a poll brings while fetching is paused. A
record the client cannot parse does not fail the poll for its neighbours: the
partitions are re-read one record at a time around it (``unreadable.py``).
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException

from altlas.consumers.ownership import Ownership
from altlas.consumers.records import InboundRecord
from altlas.consumers.unreadable import rewind_and_isolate

if TYPE_CHECKING:
    from altlas.consumers.stream import BatchingConfig

#: What parsing a fetched record can raise inside the client (a header key that is not UTF-8 is a
#: ValueError; a bad CRC is CorruptRecordException).
_UNPARSABLE = (ValueError, IndexError, struct.error, CorruptRecordException)


class Fetcher:
    """Polls one consumer into micro-batches of the current assignment epoch."""

    def __init__(self, consumer: AIOKafkaConsumer, ownership: Ownership, config: BatchingConfig) -> None:
        self._consumer = consumer
        self._ownership = ownership
        self.config = config
        self._carry: list[InboundRecord] = []  # fetched, not handed out yet
        self._next_offsets: dict[TopicPartition, int] = {}  # per partition, first offset not handed out

    async def batch(self) -> tuple[list[InboundRecord], int]:
        """The next micro-batch and its value bytes; empty when nothing arrived within the poll timeout."""
        limit = self.config.max_records
        records, self._carry = self._carry[:limit], self._carry[limit:]
        if not records:
            records = await self._poll(self.config.poll_timeout_ms, limit)
        if records and len(records) < limit and self.config.max_wait_ms > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while len(records) < limit:
                remaining_ms = int((deadline - loop.time()) * 1000)
                if remaining_ms <= 0:
                    break
                more = await self._poll(remaining_ms, limit - len(records))
                if not more:
                    break
                records.extend(more)
        # Fetched before a revocation: the partitions' new owner reads them again.
        epoch = self._ownership.epoch
        return self._fit_bytes([r for r in records if r.epoch == epoch])

    async def keep_alive(self) -> None:
        """Poll while fetching is paused (the group's max.poll.interval); keep what unpaused
        partitions (assigned meanwhile) give, for later batches."""
        self._carry.extend(await self._poll(0, self.config.max_records))

    def _fit_bytes(self, records: list[InboundRecord]) -> tuple[list[InboundRecord], int]:
        """The longest prefix within ``max_batch_bytes`` (at least one record); the rest waits."""
        total = 0
        for i, rec in enumerate(records):
            size = len(rec.value) if rec.value is not None else 0
            if total + size > self.config.max_batch_bytes and i > 0:
                self._carry[:0] = records[i:]
                return records[:i], total
            total += size
        return records, total

    async def _poll(self, timeout_ms: int, max_records: int) -> list[InboundRecord]:
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except _UNPARSABLE as exc:  # one record the client cannot parse: step over it, lose nothing
            return await rewind_and_isolate(self._consumer, self._next_offsets, exc, self._ownership.epoch)
        epoch = self._ownership.epoch  # after the poll: a revocation may have run during it
        out: list[InboundRecord] = []
        for tp, recs in batches.items():
            out.extend(InboundRecord.from_consumer_record(r, epoch) for r in recs)
            self._next_offsets[tp] = recs[-1].offset + 1
        return out

    def drop_carried(self, revoked: set[tuple[str, int]]) -> None:
        """Forget what was carried over from partitions being revoked (their new owner reads it)."""
        self._carry = [r for r in self._carry if (r.topic, r.partition) not in revoked]

    def forget(self, revoked: set[tuple[str, int]]) -> None:
        """Forget where revoked partitions were read up to."""
        for t, p in revoked:
            self._next_offsets.pop(TopicPartition(t, p), None)

    def reset(self) -> None:
        """Back to the committed offsets: nothing carried, nothing read."""
        self._carry = []
        self._next_offsets.clear()
