"""Reprocessing a range of an old request topic with a chosen model version.

Replays answer every request in [from, to) of a topic with the named model,
into an output topic, whatever the requests' own models, reply topics or
deadlines said. Results keep the request ids as keys (so a replay re-run onto a
compacted topic replaces rather than duplicates) and carry lineage headers
(source topic/partition/offset, model id, version, registry config hash, and
``altlas.replay``) so reprocessed results can be told from the originals and
joined to them. Nothing is dead-lettered and no consumer-group offsets move:
a replay reads, it does not consume.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from altlas.consumers.records import InboundRecord
from altlas.orchestration.app.components import build_components
from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.settings import MODALITIES, Modality, Settings
from altlas.orchestration.app.topics import ensure_topics
from altlas.orchestration.clients.client import topic_partitions
from altlas.orchestration.serving.answers import ReplayOutput
from altlas.orchestration.serving.processor import Overrides, RequestProcessor
from altlas.schemas.codec import AvroCodec
from altlas.schemas.modalities import MODALITY_OF_RECORD


@dataclass(frozen=True)
class Position:
    """Where a replay starts or stops: an offset (per partition) or a point in time."""

    offset: int | None = None
    timestamp_ms: int | None = None


def parse_position(text: str) -> Position:
    """``1234`` (offset), ``earliest``/``latest``, or an ISO time / epoch millis with ``ms`` suffix."""
    text = text.strip()
    if text == "earliest":
        return Position(offset=0)
    if text == "latest":
        return Position()
    if re.fullmatch(r"\d+ms", text):
        return Position(timestamp_ms=int(text[:-2]))
    if re.fullmatch(r"\d+", text):
        return Position(offset=int(text))
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return Position(timestamp_ms=int(moment.timestamp() * 1000))


@dataclass
class ReplaySummary:
    """What a replay did."""

    replay_id: str
    source: str
    output_topic: str
    model: str
    records: int = 0
    answered: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    skipped: int = 0  # not readable as a request: nothing to answer
    elapsed_s: float = 0.0


async def _offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], pos: Position, default_end: bool
) -> dict[TopicPartition, int]:
    first = await consumer.beginning_offsets(tps)
    last = await consumer.end_offsets(tps)
    if pos.timestamp_ms is not None:
        found = await consumer.offsets_for_times({tp: pos.timestamp_ms for tp in tps})
        return {tp: (found[tp].offset if found.get(tp) is not None else last[tp]) for tp in tps}
    if pos.offset is None:
        return dict(last) if default_end else dict(first)
    return {tp: min(max(pos.offset, first[tp]), last[tp]) for tp in tps}


async def replay(
    settings: Settings,
    topic: str,
    start: Position,
    end: Position,
    model: str,
    output_topic: str,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ReplaySummary:
    """Answer every request of ``topic`` in [start, end) with ``model`` into ``output_topic``."""
    replay_id = uuid.uuid4().hex[:12]
    summary = ReplaySummary(replay_id, topic, output_topic, model)
    kwargs = client_kwargs(settings.kafka, client_suffix="replay")
    await ensure_topics(
        kwargs,
        {output_topic: {"cleanup.policy": "compact"}},
        partitions=settings.topics.partitions,
        replication_factor=settings.topics.replication_factor,
    )
    # The parts that answer requests, without the consumer groups, probes and commands of a service.
    parts = build_components(settings)
    parts.registry.get(model)  # fail before reading anything when the model is unknown
    publisher = parts.publisher
    await publisher.start()
    parts.status.start()
    processors: dict[str, RequestProcessor] = {}
    for kind in MODALITIES:
        output = ReplayOutput(topic=output_topic, replay_id=replay_id)
        proc = RequestProcessor(
            kind, parts.context, Overrides(model=model, ignore_deadlines=True, output=output)
        )
        processors[kind] = proc
    consumer = AIOKafkaConsumer(
        group_id=None, enable_auto_commit=False, isolation_level="read_committed", **kwargs
    )
    await consumer.start()
    started = time.monotonic()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await topic_partitions(consumer, topic))]
        if not tps:
            raise ValueError(f"topic {topic} does not exist")
        begin = await _offsets(consumer, tps, start, default_end=False)
        stop = await _offsets(consumer, tps, end, default_end=True)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, begin[tp])
        total = sum(max(0, stop[tp] - begin[tp]) for tp in tps)
        remaining = {tp for tp in tps if begin[tp] < stop[tp]}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=512)
            groups: dict[str, list[InboundRecord]] = {}
            for tp, recs in batches.items():
                for rec in recs:
                    if rec.offset >= stop[tp]:
                        remaining.discard(tp)
                        continue
                    summary.records += 1
                    inbound = InboundRecord.from_consumer_record(rec)
                    found = _modality(parts.codec, inbound)
                    if found is None:
                        summary.skipped += 1
                        continue
                    groups.setdefault(found, []).append(inbound)
                if await consumer.position(tp) >= stop[tp]:
                    remaining.discard(tp)
            for modality, records in groups.items():
                outcomes = await processors[modality].process(records)
                messages = [m for o in outcomes for m in o.messages]
                for outcome in outcomes:
                    if outcome.result is not None:
                        summary.answered += 1
                        summary.outcomes[
                            outcome.result.status.value if outcome.error is None else outcome.error.code
                        ] += 1
                    else:
                        summary.skipped += 1
                acks = [(msg, await publisher.enqueue(msg)) for msg in messages]
                for msg, ack in acks:
                    await publisher.deliver(msg, ack)
            if progress is not None:
                progress(summary.records, total)
    finally:
        summary.elapsed_s = time.monotonic() - started
        await consumer.stop()
        await parts.workers.close()
        await parts.manager.close()
        await parts.status.close()
        await publisher.stop()
    return summary


def _modality(codec: AvroCodec, rec: InboundRecord) -> Modality | None:
    """The modality of a request record, from its writer schema (replays may read any topic)."""
    if rec.value is None:
        return None
    try:
        name = codec.writer_of(rec.value).name
    except Exception:
        return None
    return MODALITY_OF_RECORD.get(name)
