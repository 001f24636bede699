"""Kafka out: one idempotent producer for results, status events and dead letters.

Sends are enqueued in the order they are asked for (aiokafka keeps one
in-flight request per partition, so per-key order holds on the wire), and each
send returns a future that resolves when the broker acknowledged it with
``acks=all``. A caller commits input offsets only after those futures resolve.

What a failure means comes from one table (``refusals.verdict``):

- transient errors are retried, for ever on the patient topics (altlas's own
  results, dead letters and status, without which nothing can be answered) and
  for at most ``send_timeout_s`` elsewhere, so that one reply topic never holds
  a batch;
- an idempotent producer whose sequence the broker no longer accepts
  (OutOfOrderSequenceNumber after a refused batch or a broker restart,
  UnknownProducerId) is replaced, and what it had not delivered is sent again
  by the new one;
- a refusal (invalid or forbidden topic, record too large) is raised as a
  PermanentSendError carrying the error code the replacement answer gets, and
  is remembered in ``Refusals`` so that later answers go elsewhere at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.errors import OutOfOrderSequenceNumber, ProducerClosed, RecordTooLargeError, UnknownProducerId

from altlas.producers.partitioner import KeyPartitioner
from altlas.producers.refusals import UNKNOWN_TOPIC, Fate, Refusal, Refusals, verdict
from altlas.producers.send_failures import PermanentSendError, SendFailures
from altlas.producers.side_chains import SideChains
from altlas.producers.swap import ReplaceableProducer
from altlas.producers.topic_limits import TopicLimits
from altlas.schemas.codec import AvroCodec
from altlas.schemas.errors import ErrorCode
from altlas.schemas.types import Record

log = logging.getLogger(__name__)

__all__ = ["OutboundMessage", "PermanentSendError", "ProducerConfig", "Publisher", "record_size"]


class OutboundMessage(NamedTuple):
    """A record to produce (a NamedTuple: one is built per answer, like InboundRecord)."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


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
    send_timeout_s: float = 30.0  # how long a message to a non-patient topic may keep failing
    metadata_timeout_s: float = 10.0  # how long a send waits to learn a new topic's partitions


class Publisher:
    """Produces encoded messages and judges every failure; the producer itself is replaceable."""

    def __init__(
        self,
        client_kwargs: dict[str, Any],
        *,
        codec: AvroCodec | None = None,
        config: ProducerConfig | None = None,
        patient_topics: Sequence[str] = (),
        refusals: Refusals | None = None,
        topic_limits: TopicLimits | None = None,
    ) -> None:
        self.codec = codec or AvroCodec()
        self.config = config or ProducerConfig()
        self.patient_topics = frozenset(patient_topics)
        self.refusals = refusals if refusals is not None else Refusals(exempt=self.patient_topics)
        self.topic_limits = topic_limits
        cfg = self.config
        kwargs: dict[str, Any] = {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": cfg.linger_ms,
            "max_batch_size": cfg.max_batch_size,
            "max_request_size": cfg.max_request_size,
            "compression_type": cfg.compression_type,
            "request_timeout_ms": cfg.request_timeout_ms,
            **client_kwargs,
        }
        self.producers = ReplaceableProducer(
            lambda: AIOKafkaProducer(partitioner=KeyPartitioner(), **kwargs),
            backoff_s=cfg.retry_backoff_s,
            max_backoff_s=cfg.max_retry_backoff_s,
        )
        self._chains = SideChains(self.producers, cfg.metadata_timeout_s)
        self._failures = SendFailures(self.producers, self.refusals, self.patient_topics)

    async def start(self) -> None:
        """Connect (retrying while the broker is not reachable yet)."""
        await self.producers.start()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Flush what is queued and close, within ``timeout_s`` whatever the broker does."""
        self._chains.cancel()
        await self.producers.stop(timeout_s)
        if self.topic_limits is not None:
            await self.topic_limits.close()

    @property
    def client(self) -> AIOKafkaProducer:
        """The underlying aiokafka producer (a replacement's after a recovery)."""
        return self.producers.producer

    @property
    def replacements(self) -> int:
        """How many times the producer was replaced."""
        return self.producers.replacements

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
        oversized = self._oversized(msg)
        if oversized is not None:
            return _failed(oversized)  # refused here: the broker would refuse it and spend a sequence number
        swap = self.producers
        producer, generation = swap.producer, swap.generation  # both before the await: a replacement
        if self._chains.waiting(msg.topic) or not swap.knows(msg.topic):
            return self._chains.send(msg)  # behind the messages to that topic still waiting
        future: asyncio.Future[Any] = await producer.send(
            msg.topic, msg.value, key=msg.key, headers=list(msg.headers)
        )
        swap.tag(future, generation)
        return future

    def _oversized(self, msg: OutboundMessage) -> RecordTooLargeError | None:
        """An error when ``msg`` is over its topic's own max.message.bytes (when that is known)."""
        if self.topic_limits is None:
            return None
        limit = self.topic_limits.get(msg.topic)
        if limit is None or len(msg.value) < limit - 4096 or (size := record_size(msg)) <= limit:
            return None
        return RecordTooLargeError(
            f"a {size}-byte record for {msg.topic}, whose max.message.bytes is {limit}"
        )

    async def deliver(self, msg: OutboundMessage, first_try: asyncio.Future[Any] | None = None) -> Any:
        """Wait for ``msg`` to be acknowledged, re-sending what may still succeed.

        Raises PermanentSendError when the broker refuses it or, on a topic
        that is not patient, when ``send_timeout_s`` has run out; and
        asyncio.CancelledError / ProducerClosed when shutting down.
        """
        loop = asyncio.get_running_loop()
        patient = msg.topic in self.patient_topics
        deadline = None if patient else loop.time() + self.config.send_timeout_s
        backoff = self.config.retry_backoff_s
        future = first_try
        while True:
            refused = self.refusals.check(msg.topic, msg.key)
            if refused is not None and not patient:
                raise PermanentSendError(refused.reason, code=refused.code)
            if future is None:
                future = await self._send(msg)
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                return await asyncio.wait_for(asyncio.shield(future), remaining)
            except TimeoutError:
                if not future.done():  # our time limit ran out, not the send's own error
                    self._failures.expire(msg, "not acknowledged in time")
                exc = future.exception() or TimeoutError()
            except Exception as caught:
                exc = caught
            if self.producers.closing:
                raise exc
            await self._failures.judge(msg, future, exc)
            if deadline is not None and loop.time() >= deadline:
                self._failures.expire(msg, f"still failing after the time limit: {exc}")
            if not isinstance(exc, OutOfOrderSequenceNumber | UnknownProducerId):  # those resend at once
                log.warning("send to %s failed (%s); retrying in %.1fs", msg.topic, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.config.max_retry_backoff_s)
            future = None

    async def _send(self, msg: OutboundMessage) -> asyncio.Future[Any]:
        while True:
            try:
                return await self.enqueue(msg)
            except ProducerClosed:
                if self.producers.closing:
                    raise  # else replaced between the check and the send: again, on the new one
            except Exception as raised:
                return _failed(raised)  # raised at send time (e.g. too large): judged like the rest

    def clear(self, msg: OutboundMessage) -> bool:
        """Whether ``msg`` can be sent as far as is known now, with nothing to wait for."""
        return (
            self.refusals.check(msg.topic, msg.key) is None
            and self._oversized(msg) is None
            and (msg.topic in self.patient_topics or self.producers.knows(msg.topic))
        )

    async def ready(self, msg: OutboundMessage) -> Refusal | None:
        """Why ``msg`` cannot be sent, learning its topic's partitions first (bounded) when unknown.

        Exactly-once checks this before a message joins a transaction: there,
        one refused message aborts the whole transaction.
        """
        refused = self.refusals.check(msg.topic, msg.key)
        oversized = self._oversized(msg) if refused is None else None
        if oversized is not None:
            return Refusal(ErrorCode.RESULT_TOO_LARGE, str(oversized), time.monotonic())
        if refused is not None or msg.topic in self.patient_topics or self.producers.knows(msg.topic):
            return refused
        try:
            await asyncio.wait_for(self.client.partitions_for(msg.topic), self.config.metadata_timeout_s)
            return None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            judged = verdict(exc)
            self.refusals.refuse(
                msg.topic, msg.key, judged if judged.fate is Fate.REFUSED else UNKNOWN_TOPIC, f"{exc!r}"
            )
        return self.refusals.check(msg.topic, msg.key)

    async def send_and_wait(self, msg: OutboundMessage) -> Any:
        """Enqueue and wait for the acknowledgement (retrying transient errors)."""
        return await self.deliver(msg)


def _failed(exc: BaseException) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future


def record_size(msg: OutboundMessage) -> int:
    """Bytes a record takes in a produce request, with room for the record and batch overhead."""
    return len(msg.value) + len(msg.key or b"") + sum(len(k) + len(v) for k, v in msg.headers) + 128
