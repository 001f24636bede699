"""Records the Kafka client itself cannot read, found and stepped over one at a time.

aiokafka parses every record of a fetch before handing any out; a record it
cannot parse (a header key that is not UTF-8, a batch whose CRC does not
match) raises out of ``getmany`` for the whole fetch. Left alone, every poll
raises again on the same record, the consumer stops, and every instance that
takes the partition over stops on it too. Worse, records of other partitions
drained in that same call are dropped while their positions moved on.

So after such an error every partition goes back to the first offset not yet
handed out, and is then read one record at a time until the culprit is found:
it comes out as an ``InboundRecord`` carrying the error (and no value, since
none could be read), which is answered with a dead letter like any other
undecodable record, and the partition continues after it.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from altlas.consumers.records import InboundRecord
from altlas.consumers.stable_offsets import seek_committed

log = logging.getLogger(__name__)

#: How long isolating waits for a partition's next record before deciding it has none buffered.
_PROBE_MS = 200
#: How long a partition's open transaction may hold isolating back before its last settled offset is used.
_COMMITTED_WAIT_S = 90.0


async def rewind_and_isolate(
    consumer: AIOKafkaConsumer, next_offsets: dict[TopicPartition, int], error: BaseException, epoch: int = 0
) -> list[InboundRecord]:
    """Re-read what the failed poll lost, one record at a time; the unreadable ones carry their error."""
    log.warning("a fetched record could not be parsed (%s); isolating it", type(error).__name__)
    assigned = list(consumer.assignment())
    await seek_committed(consumer, [tp for tp in assigned if tp not in next_offsets], _COMMITTED_WAIT_S)
    for tp in assigned:
        if tp in next_offsets:
            consumer.seek(tp, next_offsets[tp])
    out: list[InboundRecord] = []
    for tp in assigned:
        while True:
            try:
                got = await consumer.getmany(tp, timeout_ms=_PROBE_MS, max_records=1)
            except Exception as exc:
                offset = await consumer.position(tp)
                out.append(unreadable(tp, offset, exc, epoch))
                consumer.seek(tp, offset + 1)
                next_offsets[tp] = offset + 1
                continue
            records: list[Any] = got.get(tp, [])
            if not records:
                break
            out.extend(InboundRecord.from_consumer_record(r, epoch) for r in records)
            next_offsets[tp] = records[-1].offset + 1
    return out


def unreadable(tp: TopicPartition, offset: int, error: BaseException, epoch: int = 0) -> InboundRecord:
    """The stand-in for a record that could not be parsed: its position, and why, for the dead letter."""
    log.warning("unreadable record at %s[%d]@%d: %s", tp.topic, tp.partition, offset, error)
    return InboundRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        key=None,
        value=None,
        headers=(),
        timestamp_ms=0,
        epoch=epoch,
        unreadable=f"{type(error).__name__}: {error}",
    )
