"""Hostile requests in the middle of ordinary traffic each fail alone, through the real consumer and broker.

Each one gets its error result on the modality's results topic (with a code that says why) and a
dead letter with its original bytes and position; every ordinary request is answered; the group's
committed offsets pass all of them. Both delivery guarantees.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import make_request
from altlas.schemas.types import ResultStatus, VisionResult
from tests.conftest import connect, create_topics, isolated_settings, serving
from tests.images import png_bomb, solid

ORDINARY = 300
MANY = [f"m{i}" for i in range(5000)]  # distinct ids: de-duplication alone does not cap them


async def _small_reply_topic(settings: Settings) -> str:
    name = f"ai.results.small-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name, num_partitions=1, replication_factor=1, topic_configs={"max.message.bytes": "1500"}
                )
            ]
        )
    finally:
        await admin.close()
    return name


def _hostile(settings: Settings, small: str) -> list[tuple[str, Any, str | None]]:
    """(case, request or raw bytes, expected error code on the results topic; None: dead letter only)."""
    png = solid((10, 200, 10))
    topics = settings.topics

    def req(case: str, **kwargs: Any) -> Any:
        kwargs.setdefault("model", "mean-color")
        payload = kwargs.pop("payload", png)
        task = kwargs.pop("task", "classify")
        return make_request("vision", task, payload, request_id=f"hostile-{case}", **kwargs)

    return [
        ("newline", req("newline", reply_topic="x\n"), "REPLY_TOPIC_REFUSED"),
        (
            "commands-newline",
            req("commands-newline", reply_topic=topics.model_commands + "\n"),
            "REPLY_TOPIC_REFUSED",
        ),
        ("offsets", req("offsets", reply_topic="__consumer_offsets"), "REPLY_TOPIC_REFUSED"),
        ("schemas", req("schemas", reply_topic="_schemas"), "REPLY_TOPIC_REFUSED"),
        ("own-requests", req("own-requests", reply_topic=topics.requests("text")), "REPLY_TOPIC_REFUSED"),
        ("other-results", req("other-results", reply_topic=topics.results("audio")), "REPLY_TOPIC_REFUSED"),
        ("other-team", req("other-team", reply_topic="connect-offsets"), "REPLY_TOPIC_REFUSED"),
        (
            "too-large-for-reply",
            req("too-large-for-reply", reply_topic=small, metadata={"pad": "p" * 3000}),
            "RESULT_TOO_LARGE",
        ),
        (
            "ensemble-bomb",
            req("ensemble-bomb", model="", params={"strategy": "ensemble", "models": MANY}),
            "INVALID_PARAMS",
        ),
        (
            "pixel-bomb-auto",
            req("pixel-bomb-auto", model="", task="auto", payload=png_bomb(12000, 12000)),
            "PAYLOAD_TOO_LARGE",
        ),
        ("pixel-bomb", req("pixel-bomb", payload=png_bomb(12000, 12000)), "PAYLOAD_TOO_LARGE"),
        ("confluent-unknown-id", b"\x00\x00\x00\x30\x39" + os.urandom(40), None),
    ]


async def _committed(settings: Settings, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"{settings.kafka.group_id}.vision")
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_hostile_requests_fail_alone_and_the_stream_commits_past_them(
    kafka_bootstrap: str, registry_file: Path, delivery: str
) -> None:
    settings = isolated_settings(kafka_bootstrap, registry_file, modalities=["vision"], delivery=delivery)
    requests_topic = settings.topics.requests("vision")
    async with serving(settings), connect(settings) as client:
        small = await _small_reply_topic(settings)
        hostile = _hostile(settings, small)
        reader = AIOKafkaConsumer(
            settings.topics.results("vision"),
            settings.topics.dead_letter,
            group_id=None,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            **client_kwargs(settings.kafka),
        )
        await reader.start()
        try:
            ordinary = [
                make_request(
                    "vision", "classify", solid((i % 250, 3, 3)), model="mean-color", request_id=f"ok-{i}"
                )
                for i in range(ORDINARY)
            ]
            sent: dict[str, tuple[int, int]] = {}
            step = ORDINARY // (len(hostile) + 1)
            for n, (case, item, _) in enumerate(hostile):
                await client.send_many(ordinary[n * step : (n + 1) * step])
                value = (
                    item
                    if isinstance(item, bytes)
                    else client.codec.encode_record(item, topic=requests_topic)
                )
                meta = await client.send_raw(requests_topic, value, key=case.encode())
                sent[case] = (meta.partition, meta.offset)
            await client.send_many(ordinary[len(hostile) * step :])
            ends = {
                tp.partition: off
                for tp, off in (
                    await reader._client.fetch_all_metadata() and await _end_offsets(settings, requests_topic)
                ).items()
            }
            results: dict[str, VisionResult] = {}
            letters: dict[tuple[int, int], Any] = {}
            wanted = {r.request_id for r in ordinary} | {f"hostile-{c}" for c, _, code in hostile if code}
            deadline = time.monotonic() + 90
            while (wanted - set(results) or len(letters) < len(hostile)) and time.monotonic() < deadline:
                batches = await reader.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    for rec in records:
                        if tp.topic == settings.topics.dead_letter:
                            letter = client.decode_dead_letter(rec.value)
                            letters[(letter.partition, letter.offset)] = letter
                        else:
                            result = client.codec.decode_record(rec.value, VisionResult)
                            results.setdefault(result.request_id, result)
            passed = time.monotonic() + 10
            committed: dict[int, int] = {}
            while time.monotonic() < passed:
                committed = await _committed(settings, requests_topic)
                if all(committed.get(p, -1) >= end for p, end in ends.items()):
                    break
                await asyncio.sleep(0.5)
        finally:
            await reader.stop()

    for request in ordinary:
        assert results[request.request_id].status is ResultStatus.OK, request.request_id
    for case, item, code in hostile:
        partition, offset = sent[case]
        letter = letters.get((partition, offset))
        assert letter is not None, f"{case}: no dead letter"
        assert letter.topic == requests_topic
        assert letter.value == (
            item if isinstance(item, bytes) else client.codec.encode_record(item, topic=requests_topic)
        )
        if code is not None:
            result = results[f"hostile-{case}"]
            assert result.status is ResultStatus.ERROR and result.error is not None, case
            assert result.error.code == code, (case, result.error)
            assert letter.error_code == code
    assert all(committed.get(p, -1) >= end for p, end in ends.items()), (committed, ends)


async def _end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(group_id=None, **client_kwargs(settings.kafka))
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        return await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        await consumer.stop()


async def test_a_record_the_kafka_client_cannot_parse_is_dead_lettered_and_nothing_around_it_is_lost(
    kafka_bootstrap: str, registry_file: Path
) -> None:
    """A header key that is not UTF-8 makes aiokafka raise for the whole fetch, on every instance."""
    import shutil
    import subprocess

    kcat = shutil.which("kcat")
    assert kcat, "kcat is installed by make system-deps"
    settings = isolated_settings(
        kafka_bootstrap, registry_file, modalities=["vision"], topics={"partitions": 1}
    )
    topic = settings.topics.requests("vision")
    async with connect(settings) as client:
        before = [
            make_request("vision", "classify", solid((i, 1, 1)), model="mean-color", request_id=f"before-{i}")
            for i in range(20)
        ]
        after = [
            make_request("vision", "classify", solid((i, 2, 2)), model="mean-color", request_id=f"after-{i}")
            for i in range(20)
        ]
        await create_topics(settings)
        await client.send_many(before, topic=topic)
        poison = b"any value: the header key is what no client can read"  # one line: kcat splits on newlines
        await asyncio.to_thread(
            subprocess.run,
            [kcat, "-b", kafka_bootstrap, "-P", "-t", topic, "-p", "0", "-H", "\udcff\udcfe=x"],
            input=poison,
            check=True,
            capture_output=True,
            env={**os.environ, "LC_ALL": "C"},
        )
        await client.send_many(after, topic=topic)
        async with serving(settings):
            async with client.reader(settings.topics.results("vision"), from_beginning=True) as results:
                answers = await client.collect(
                    results, "vision", [r.request_id for r in before + after], timeout_s=60
                )
            async with client.reader(settings.topics.dead_letter, from_beginning=True) as dlq:
                letters = [client.decode_dead_letter(r.value) for r in await dlq.read(5.0)]
            for _ in range(30):  # the commit follows the dead letter's acknowledgement
                committed = await _committed(settings, topic)
                if committed.get(0, -1) >= 41:
                    break
                await asyncio.sleep(0.3)
    assert len(answers) == 40 and all(a.status is ResultStatus.OK for a in answers.values())
    (letter,) = letters
    assert (letter.topic, letter.partition, letter.offset) == (topic, 0, 20)
    assert letter.error_code == "DECODE_ERROR" and "could not parse" in (letter.error_message or "")
    assert committed.get(0) == 41


async def test_a_megabyte_of_trace_headers_still_gets_its_answer(
    kafka_bootstrap: str, registry_file: Path
) -> None:
    # Headers are the caller's to write. A 1.5 MB tracestate (gzip makes the request small on the wire)
    # copied onto the answer made the result, its error result and its dead letter all too large to
    # publish: the request got no answer at all. Only a well-formed traceparent and a tracestate of at
    # most 512 bytes are passed on.
    settings = isolated_settings(kafka_bootstrap, registry_file, modalities=["vision"])
    topic = settings.topics.requests("vision")
    traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    fat = [("traceparent", traceparent), ("tracestate", b"a=" + b"x" * 1_500_000)]
    small = [("traceparent", traceparent), ("tracestate", b"vendor=abc")]
    async with serving(settings), connect(settings) as client:
        producer = AIOKafkaProducer(
            compression_type="gzip", max_request_size=4 * 1024 * 1024, **client_kwargs(settings.kafka)
        )
        reader = AIOKafkaConsumer(
            settings.topics.results("vision"), group_id=None, auto_offset_reset="earliest",
            **client_kwargs(settings.kafka),
        )  # fmt: skip
        await producer.start()
        await reader.start()
        try:
            for name, headers in (("fat", fat), ("small", small)):
                request = make_request(
                    "vision", "classify", solid((9, 9, 9)), model="mean-color", request_id=f"headers-{name}"
                )
                value = client.codec.encode_record(request, topic=topic)
                await producer.send_and_wait(topic, value, key=name.encode(), headers=headers)
            answers: dict[str, tuple[VisionResult, dict[str, bytes]]] = {}
            deadline = time.monotonic() + 60
            while len(answers) < 2 and time.monotonic() < deadline:
                for records in (await reader.getmany(timeout_ms=500)).values():
                    for rec in records:
                        result = client.codec.decode_record(rec.value, VisionResult)
                        answers[result.request_id] = (result, dict(rec.headers))
        finally:
            await reader.stop()
            await producer.stop()
    fat_result, fat_headers = answers["headers-fat"]
    assert fat_result.status is ResultStatus.OK
    assert fat_headers["traceparent"] == traceparent and "tracestate" not in fat_headers
    small_result, small_headers = answers["headers-small"]
    assert small_result.status is ResultStatus.OK and small_headers["tracestate"] == b"vendor=abc"
