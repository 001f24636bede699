"""One stream worker per served modality: its consumer group, its processor and, for exactly-once, its
transactional producer.

Opened when the instance starts rather than built with the other components: a
Kafka consumer belongs to the running event loop, and joining the groups comes
last so that nothing is fetched before the producer, the decoders and the
command consumer are up.
"""

from __future__ import annotations

from altlas.consumers.stream import BatchingConfig, BatchingConsumer
from altlas.orchestration.app.components import Components
from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.settings import Modality, Settings
from altlas.orchestration.serving.loop import StreamWorker
from altlas.orchestration.serving.processor import RequestProcessor
from altlas.producers.transactions import TransactionalPublisher


async def open_streams(parts: Components) -> dict[str, StreamWorker]:
    """Start a consumer (and a transactional producer for exactly-once) per modality, in order."""
    streams: dict[str, StreamWorker] = {}
    for modality in parts.settings.modalities:
        streams[modality] = await _open(parts, modality)
    return streams


async def _open(parts: Components, modality: Modality) -> StreamWorker:
    s = parts.settings
    consumer = BatchingConsumer(
        [s.topics.requests(modality)],
        group_id=f"{s.kafka.group_id}.{modality}",
        client_kwargs=client_kwargs(s.kafka, client_suffix=modality),
        config=_batching(s),
        consumer_kwargs=_consumer_kwargs(s),
        transactional=parts.transactional_prefix is not None,
    )
    transactions = None
    if parts.transactional_prefix is not None:
        transactions = TransactionalPublisher(
            client_kwargs(s.kafka, client_suffix=f"txn-{modality}"),
            f"{parts.transactional_prefix}.{modality}",
            max_request_size=s.limits.max_result_bytes,
            refusals=parts.refusals,
            send_timeout_s=s.limits.send_timeout_s,
        )
        await transactions.start()
    await consumer.start()
    return StreamWorker(
        consumer,
        RequestProcessor(modality, parts.context, budget=consumer),
        parts.publisher,
        transactions=transactions,
        max_batches_in_flight=s.batching.max_batches_in_flight,
        max_message_bytes=s.limits.max_result_bytes,
    )


def _batching(s: Settings) -> BatchingConfig:
    return BatchingConfig(
        max_records=s.batching.fetch_max_records,
        max_wait_ms=s.batching.max_wait_ms,
        max_inflight=s.batching.max_inflight,
        max_batch_bytes=s.batching.max_batch_bytes,
        max_inflight_bytes=s.batching.max_inflight_bytes,
    )


def _consumer_kwargs(s: Settings) -> dict[str, object]:
    kwargs: dict[str, object] = {
        "max_partition_fetch_bytes": max(1024 * 1024, s.limits.max_message_bytes),
        "session_timeout_ms": s.kafka.session_timeout_ms,
        "heartbeat_interval_ms": max(100, s.kafka.session_timeout_ms // 3),
    }
    if s.delivery == "exactly_once":
        kwargs["isolation_level"] = "read_committed"  # answers only to committed requests
    return kwargs
