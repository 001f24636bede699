"""The publisher against a real broker: refusals are final, bounded in time, and never break the producer."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, OutOfOrderSequenceNumber

from altlas.producers.publisher import OutboundMessage, PermanentSendError, ProducerConfig, Publisher
from altlas.schemas.errors import ErrorCode


async def _topic(bootstrap: str, **configs: str) -> str:
    name = f"refusals-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=1, replication_factor=1, topic_configs=configs)]
        )
    finally:
        await admin.close()
    return name


async def test_a_record_the_broker_refuses_as_too_large_does_not_break_later_sends(
    kafka_bootstrap: str,
) -> None:
    small = await _topic(kafka_bootstrap, **{"max.message.bytes": "2000"})

    # Control: a plain idempotent aiokafka producer loses its sequence on that partition for good.
    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
    await raw.start()
    try:
        await (await raw.send(small, b"first", key=b"k"))  # the broker now tracks this producer's sequence
        with pytest.raises(KafkaError):
            await (await raw.send(small, b"x" * 5000, key=b"k"))
        with pytest.raises(OutOfOrderSequenceNumber):
            await asyncio.wait_for(await raw.send(small, b"small", key=b"k"), 20)
    finally:
        await raw.stop()

    publisher = Publisher({"bootstrap_servers": kafka_bootstrap}, config=ProducerConfig(send_timeout_s=10))
    await publisher.start()
    try:
        await publisher.deliver(OutboundMessage(small, b"first", b"k"))
        with pytest.raises(PermanentSendError) as refused:
            await publisher.deliver(OutboundMessage(small, b"x" * 5000, b"big"))
        assert refused.value.code is ErrorCode.RESULT_TOO_LARGE
        # The same partition takes the next records, in order: the producer was replaced.
        acks = [
            await asyncio.wait_for(publisher.deliver(OutboundMessage(small, f"m{i}".encode(), b"k")), 20)
            for i in range(5)
        ]
        assert [a.offset for a in acks] == sorted(a.offset for a in acks)
        assert publisher.replacements == 1
        # The refusal is remembered for that key on that topic only.
        assert publisher.refusals.check(small, b"big") is not None
        assert publisher.refusals.check(small, b"k") is None
    finally:
        await publisher.stop()


@pytest.mark.parametrize("topic", ["__consumer_offsets", "bad\ntopic", "bad topic"])
async def test_a_topic_the_broker_refuses_fails_that_message_fast_and_alone(
    kafka_bootstrap: str, topic: str
) -> None:
    good = await _topic(kafka_bootstrap)
    publisher = Publisher({"bootstrap_servers": kafka_bootstrap}, config=ProducerConfig(send_timeout_s=8))
    await publisher.start()
    try:
        started = time.monotonic()
        refused = asyncio.create_task(publisher.deliver(OutboundMessage(topic, b"v", b"k")))
        fine = await asyncio.wait_for(publisher.deliver(OutboundMessage(good, b"v", b"k")), 10)
        assert fine.topic == good
        with pytest.raises(PermanentSendError) as failure:
            await asyncio.wait_for(refused, 20)
        assert failure.value.code in (ErrorCode.REPLY_TOPIC_REFUSED, ErrorCode.PUBLISH_TIMED_OUT)
        assert time.monotonic() - started < 15
        # Remembered: the next answer for that topic is refused at once.
        again = time.monotonic()
        with pytest.raises(PermanentSendError):
            await publisher.deliver(OutboundMessage(topic, b"v2", b"k2"))
        assert time.monotonic() - again < 0.5
    finally:
        await publisher.stop()


async def test_patient_topics_are_never_given_up(kafka_bootstrap: str) -> None:
    """altlas's own topics wait for the broker rather than turn answers into errors."""
    own = await _topic(kafka_bootstrap)
    publisher = Publisher(
        {"bootstrap_servers": kafka_bootstrap},
        config=ProducerConfig(send_timeout_s=0.01),
        patient_topics=[own],
    )
    await publisher.start()
    try:
        ack = await asyncio.wait_for(publisher.deliver(OutboundMessage(own, b"v", b"k")), 20)
        assert ack.topic == own
        assert publisher.refusals.exempt == frozenset({own})
    finally:
        await publisher.stop()


async def test_a_topic_limit_read_from_the_broker_refuses_before_sending(kafka_bootstrap: str) -> None:
    """Knowing the topic's own max.message.bytes, nothing is sent and no producer is spent."""
    from altlas.producers.topic_limits import TopicLimits

    small = await _topic(kafka_bootstrap, **{"max.message.bytes": "2000"})
    limits = TopicLimits({"bootstrap_servers": kafka_bootstrap})
    assert await limits.fetch(small) == 2000
    publisher = Publisher({"bootstrap_servers": kafka_bootstrap}, topic_limits=limits)
    await publisher.start()
    try:
        await publisher.deliver(OutboundMessage(small, b"first", b"k"))
        with pytest.raises(PermanentSendError) as refused:
            await publisher.deliver(OutboundMessage(small, b"x" * 5000, b"big"))
        assert refused.value.code is ErrorCode.RESULT_TOO_LARGE and "max.message.bytes is 2000" in str(
            refused.value
        )
        assert publisher.replacements == 0
        ready = await publisher.ready(OutboundMessage(small, b"x" * 5000, b"other"))
        assert ready is not None and ready.code is ErrorCode.RESULT_TOO_LARGE
        assert (await publisher.deliver(OutboundMessage(small, b"after", b"k"))).topic == small
    finally:
        await publisher.stop()
