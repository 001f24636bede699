"""A small Kafka client for talking to altlas: build requests, send them, collect results.

Used by ``altlas send``, the demo, the tests and the benchmarks, so it is the
same path another team's service takes: Avro requests to a request topic,
results read back from the result topic and matched by request id.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from altlas.orchestration.app.settings import Modality, TopicSettings
from altlas.schemas.codec import AvroCodec
from altlas.schemas.modalities import RESULT_TYPES, request_modality
from altlas.schemas.types import (
    AnyRequest,
    AudioRequest,
    DeadLetter,
    ModelStatus,
    ParamValue,
    Record,
    Result,
    TextRequest,
    VisionRequest,
)


def make_request(
    modality: Modality,
    task: str,
    payload: bytes | str,
    *,
    model: str = "",
    params: Mapping[str, ParamValue] | None = None,
    request_id: str | None = None,
    reply_topic: str | None = None,
    deadline: datetime | None = None,
    metadata: Mapping[str, str] | None = None,
) -> AnyRequest:
    """A request record of the right type for ``modality``."""
    common: dict[str, Any] = {
        "request_id": request_id or uuid.uuid4().hex,
        "task": task,
        "model": model,
        "params": dict(params or {}),
        "reply_topic": reply_topic,
        "created_at": datetime.now(UTC),
        "deadline": deadline,
        "metadata": dict(metadata or {}),
    }
    if modality == "text":
        text = payload.decode() if isinstance(payload, bytes) else payload
        return TextRequest(payload=text, **common)
    data = payload.encode() if isinstance(payload, str) else payload
    if modality == "vision":
        return VisionRequest(payload=data, **common)
    return AudioRequest(payload=data, **common)


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 10.0) -> set[int]:
    """Partition ids of ``topic`` from fresh cluster metadata (waiting briefly for a new topic)."""
    deadline = time.monotonic() + timeout_s
    while True:
        # The consumer's own metadata only covers subscribed topics; ask the cluster.
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(topic)
        if partitions or time.monotonic() > deadline:
            return set(partitions or ())
        await asyncio.sleep(0.2)


class TopicReader:
    """Reads a topic from the offsets it had when ``start`` was called (or from the beginning)."""

    def __init__(self, client_kwargs: dict[str, Any], topic: str, *, from_beginning: bool = False) -> None:
        self.topic = topic
        self.from_beginning = from_beginning
        # read_committed: answers of an aborted exactly-once transaction are answered again later, and
        # a reader must not take the aborted copy; without transactions it changes nothing.
        self._consumer = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, isolation_level="read_committed", **client_kwargs
        )

    async def start(self) -> None:
        """Assign all partitions and fix the starting positions."""
        await self._consumer.start()
        partitions = await topic_partitions(self._consumer, self.topic)
        if not partitions:
            await self._consumer.stop()
            raise RuntimeError(f"topic {self.topic} does not exist (is altlas running, or topics created?)")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        if self.from_beginning:
            await self._consumer.seek_to_beginning(*tps)
        else:
            await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)

    async def stop(self) -> None:
        """Disconnect."""
        await self._consumer.stop()

    async def read(self, timeout_s: float, max_records: int | None = None) -> list[Any]:
        """Records that arrive within ``timeout_s`` (one poll)."""
        batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [r for recs in batches.values() for r in recs]

    async def __aenter__(self) -> TopicReader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class AltlasClient:
    """Send requests and wait for their results over Kafka."""

    def __init__(self, client_kwargs: dict[str, Any], codec: AvroCodec, topics: TopicSettings) -> None:
        self.kwargs = client_kwargs
        self.codec = codec
        self.topics = topics
        self._producer = AIOKafkaProducer(
            acks="all", linger_ms=2, max_request_size=16 * 1024 * 1024, **client_kwargs
        )

    async def start(self) -> None:
        """Connect the producer."""
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        await self._producer.stop()

    async def __aenter__(self) -> AltlasClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def reader(self, topic: str, *, from_beginning: bool = False) -> TopicReader:
        """A reader of ``topic``; start it before sending to not miss answers."""
        return TopicReader(self.kwargs, topic, from_beginning=from_beginning)

    async def send(
        self,
        request: AnyRequest,
        *,
        modality: Modality | None = None,
        topic: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Produce one request, keyed by its id, and wait for the ack."""
        modality = modality or request_modality(request)
        topic = topic or self.topics.requests(modality)
        value = self.codec.encode_record(request, topic=topic)
        await self._producer.send_and_wait(topic, value, key=request.request_id.encode(), headers=headers)

    async def send_many(self, requests: Iterable[AnyRequest], *, topic: str | None = None) -> int:
        """Produce many requests without waiting for each ack; returns how many."""
        futures = []
        for request in requests:
            t = topic or self.topics.requests(request_modality(request))
            value = self.codec.encode_record(request, topic=t)
            futures.append(await self._producer.send(t, value, key=request.request_id.encode()))
        await asyncio.gather(*futures)
        return len(futures)

    async def send_raw(self, topic: str, value: bytes | None, key: bytes | None = None) -> Any:
        """Produce arbitrary bytes (tests of bad input); returns the RecordMetadata."""
        return await self._producer.send_and_wait(topic, value, key=key)

    async def collect(
        self, reader: TopicReader, modality: Modality, request_ids: Iterable[str], timeout_s: float = 30.0
    ) -> dict[str, Result]:
        """Results for ``request_ids`` read from ``reader`` (first result per id wins)."""
        wanted = set(request_ids)
        found: dict[str, Result] = {}
        cls = _result_class(modality)
        deadline = time.monotonic() + timeout_s
        while wanted - set(found) and time.monotonic() < deadline:
            for rec in await reader.read(min(0.5, max(0.01, deadline - time.monotonic()))):
                result = self.codec.decode_record(rec.value, cls)
                if result.request_id in wanted and result.request_id not in found:
                    found[result.request_id] = result
        return found

    async def request(
        self, request: AnyRequest, *, modality: Modality | None = None, timeout_s: float = 60.0
    ) -> Result | None:
        """Send one request and wait for its result."""
        modality = modality or request_modality(request)
        async with self.reader(request.reply_topic or self.topics.results(modality)) as reader:
            await self.send(request, modality=modality)
            return (await self.collect(reader, modality, [request.request_id], timeout_s)).get(
                request.request_id
            )

    def decode_dead_letter(self, value: bytes) -> DeadLetter:
        """Decode a dead-letter record."""
        return self.codec.decode_record(value, DeadLetter)

    def decode_status(self, value: bytes) -> ModelStatus:
        """Decode a model-status record."""
        return self.codec.decode_record(value, ModelStatus)

    async def publish(self, record: Record, topic: str, key: str) -> None:
        """Produce any event record (e.g. a ModelCommand)."""
        await self._producer.send_and_wait(
            topic, self.codec.encode_record(record, topic=topic), key=key.encode()
        )


def _result_class(modality: str) -> type[Result]:
    return RESULT_TYPES[modality]  # type: ignore[index]
