"""What `altlas status` shows: consumer lag, models as the status topic reports them, recent errors.

Everything is read from Kafka (group offsets, the compacted status topic, the
dead-letter topic), so the picture covers every instance of the group, not
just one process, and needs no access to the instances themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import build_codec
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import topic_partitions
from altlas.schemas.types import DeadLetter, ModelStatus


@dataclass(frozen=True)
class Lag:
    """One partition of one modality's consumer group."""

    group: str
    topic: str
    partition: int
    committed: int | None
    end: int

    @property
    def lag(self) -> int:
        """Records not yet committed (all of them when nothing was committed)."""
        return self.end - (self.committed or 0)


@dataclass(frozen=True)
class RecentError:
    """One dead letter."""

    when: datetime
    code: str
    source: str
    request_id: str | None
    message: str


async def consumer_lag(settings: Settings) -> list[Lag]:
    """Committed offset and log end of every request partition, per modality group."""
    kwargs = client_kwargs(settings.kafka, client_suffix="status")
    admin = AIOKafkaAdminClient(**kwargs)
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **kwargs)
    await admin.start()
    await consumer.start()
    out: list[Lag] = []
    try:
        for modality in settings.modalities:
            topic = settings.topics.requests(modality)
            group = f"{settings.kafka.group_id}.{modality}"
            tps = [TopicPartition(topic, p) for p in sorted(await topic_partitions(consumer, topic, 2.0))]
            if not tps:
                continue
            ends = await consumer.end_offsets(tps)
            committed = await admin.list_consumer_group_offsets(group)
            for tp in tps:
                meta = committed.get(tp)
                out.append(
                    Lag(
                        group,
                        topic,
                        tp.partition,
                        meta.offset if meta is not None and meta.offset >= 0 else None,
                        ends[tp],
                    )
                )
    finally:
        await consumer.stop()
        await admin.close()
    return out


async def _read_all(settings: Settings, topic: str, last: int | None = None) -> list[Any]:
    """Every record of ``topic`` (or the ``last`` ones of each partition), oldest first."""
    consumer = AIOKafkaConsumer(
        group_id=None, enable_auto_commit=False, **client_kwargs(settings.kafka, client_suffix="status")
    )
    await consumer.start()
    records: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(await topic_partitions(consumer, topic, 2.0))]
        if not tps:
            return []
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(starts[tp], ends[tp] - last) if last is not None else starts[tp])
        pending = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=1000)
            if not batches:
                break
            for tp, recs in batches.items():
                records += recs
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: r.timestamp)


async def model_states(settings: Settings) -> list[ModelStatus]:
    """The latest status of each (model, instance) pair, from the compacted status topic."""
    codec = build_codec(settings)
    latest: dict[tuple[str, str, str], ModelStatus] = {}
    for rec in await _read_all(settings, settings.topics.model_status):
        try:
            status = codec.decode_record(rec.value, ModelStatus)
        except Exception:
            continue
        latest[(status.model_id, status.model_version, status.instance_id)] = status
    return sorted(latest.values(), key=lambda s: (s.model_id, s.model_version, s.instance_id))


async def recent_errors(settings: Settings, count: int = 10) -> list[RecentError]:
    """The newest dead letters."""
    codec = build_codec(settings)
    out = []
    for rec in (await _read_all(settings, settings.topics.dead_letter, last=count))[-count:]:
        try:
            letter = codec.decode_record(rec.value, DeadLetter)
        except Exception:
            continue
        out.append(
            RecentError(
                letter.failed_at,
                letter.error_code,
                f"{letter.topic}:{letter.partition}:{letter.offset}",
                letter.request_id,
                letter.error_message[:120],
            )
        )
    return out
