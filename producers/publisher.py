"""Kafka out: one idempotent producer for results, status events and dead letters.

Sends are enqueued in the order they are asked for (aiokafka keeps one
in-flight request per partition, so per-key order holds on the wire), and each
send returns a future that resolves when the broker acknowledged it with
``acks=all``. A caller commits input offsets only after those futures resolve.
Retriable failures are retried here with backoff; what cannot succeed
(a record over the size limit) is raised so the caller can replace it with an
error result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, ProducerClosed

from altlas.producers.partitioner import KeyPartitioner
from altlas.schemas.codec import AvroCodec
from altlas.schemas.types import Record

log = logging.getLogger(__name__)


class OutboundMessage(NamedTuple):
    """A record to produce (a NamedTuple: one is built per answer, like InboundRecord)."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


class PermanentSendError(Exception):
    """A message the broker will never accept as it is (e.g. too large)."""


_PERMANENT = (MessageSizeTooLargeError,)


@dataclass(frozen=True)
class ProducerConfig:
    """Producer tuning; defaults favour throughput with bounded latency."""

    linger_ms: int = 2
    max_batch_size: int = 1024 * 1024
    max_request_size: int = 1024 * 1024
    compression_type: str | None = None
    request_timeout_ms: int = 30_000
    retry_backoff_s: float = 0.2
    max_retry_backoff_s: float = 5.0


class Publisher:
    """Produces encoded messages; owns the producer's lifecycle."""

    def __init__(
        self,
        client_kwargs: dict[str, Any],
        *,
        codec: AvroCodec | None = None,
        config: ProducerConfig | None = None,
    ) -> None:
        self.codec = codec or AvroCodec()
        self.config = config or ProducerConfig()
        cfg = self.config
        self._producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=cfg.linger_ms,
            max_batch_size=cfg.max_batch_size,
            max_request_size=cfg.max_request_size,
            compression_type=cfg.compression_type,
            request_timeout_ms=cfg.request_timeout_ms,
            partitioner=KeyPartitioner(),
            **client_kwargs,
        )
        self._closing = False

    async def start(self) -> None:
        """Connect (retrying while the broker is not reachable yet)."""
        await self._producer.start()

    async def stop(self) -> None:
        """Flush what is queued and close."""
        self._closing = True
        await self._producer.stop()

    @property
    def client(self) -> AIOKafkaProducer:
        """The underlying aiokafka producer."""
        return self._producer

    def message(
        self,
        record: Record,
        topic: str,
        *,
        key: str | bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> OutboundMessage:
        """Encode an event record for ``topic``."""
        key_bytes = key.encode() if isinstance(key, str) else key
        return OutboundMessage(
            topic, self.codec.encode_record(record, topic=topic), key_bytes, tuple(headers)
        )

    async def enqueue(self, msg: OutboundMessage) -> asyncio.Future[Any]:
        """Queue one message; the future resolves with its RecordMetadata on ack."""
        return await self._producer.send(  # type: ignore[no-any-return]
            msg.topic, msg.value, key=msg.key, headers=list(msg.headers)
        )

    async def deliver(self, msg: OutboundMessage, first_try: asyncio.Future[Any] | None = None) -> Any:
        """Wait for ``msg`` to be acknowledged, re-sending on transient errors.

        Raises PermanentSendError when the broker can never take it, and
        asyncio.CancelledError / ProducerClosed when shutting down.
        """
        backoff = self.config.retry_backoff_s
        future = first_try
        while True:
            try:
                if future is None:
                    future = await self.enqueue(msg)
                return await future
            except _PERMANENT as exc:
                raise PermanentSendError(f"{type(exc).__name__}: {exc}") from exc
            except ProducerClosed:
                raise
            except KafkaError as exc:
                if self._closing:
                    raise
                log.warning("send to %s failed (%s); retrying in %.1fs", msg.topic, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.max_retry_backoff_s)
                future = None

    async def send_and_wait(self, msg: OutboundMessage) -> Any:
        """Enqueue and wait for the acknowledgement (retrying transient errors)."""
        return await self.deliver(msg)
