"""Flow control: backpressure pauses partitions, per-key order holds, limits answer instead of crashing."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import make_request
from altlas.schemas.types import ResultStatus, VisionResult
from tests.conftest import Running, connect, exchange, isolated_settings, serving
from tests.images import rotated_page, solid


async def test_backpressure_pauses_partitions_and_bounds_in_flight_records(
    kafka_bootstrap: str, registry_file
) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(
        kafka_bootstrap,
        registry_file,
        batching={"max_inflight": 16, "fetch_max_records": 8, "max_batch": 4},
        cache={"enabled": False},  # every request must really run, or nothing ever piles up
    )
    async with serving(settings) as run:
        worker = run.orchestrator.streams["vision"]
        inflight, paused = [], []

        async def sample() -> None:
            while True:
                inflight.append(worker.consumer.inflight)
                paused.append(bool(worker.consumer.client.paused()))
                await asyncio.sleep(0.002)

        sampler = asyncio.create_task(sample())
        try:
            page = rotated_page(0, fmt="JPEG")
            requests = [make_request("vision", "classify", page, request_id=f"bp-{i}") for i in range(300)]
            results = await exchange(settings, "vision", requests)
        finally:
            sampler.cancel()
    assert len(results) == 300 and all(r.status is ResultStatus.OK for r in results.values())
    assert any(paused), "partitions were never paused"
    # The bound is checked before each fetch, so it can be exceeded by at most one fetch.
    assert max(inflight) <= 16 + 8


async def test_batches_and_in_flight_bytes_are_bounded_for_large_payloads(
    kafka_bootstrap: str, registry_file
) -> None:  # type: ignore[no-untyped-def]
    page = rotated_page(0, fmt="PNG")  # ~80 KB: few records, many bytes
    size = len(page) + 200  # the Avro envelope around it
    settings = isolated_settings(
        kafka_bootstrap,
        registry_file,
        batching={"max_batch_bytes": 3 * size, "max_inflight_bytes": 8 * size, "max_inflight": 4096},
        cache={"enabled": False},
    )
    async with serving(settings) as run:
        worker = run.orchestrator.streams["vision"]
        consumer = worker.consumer
        batch_bytes: list[int] = []
        fetch = consumer.next_batch

        async def recording_fetch() -> list:  # type: ignore[type-arg]
            records = await fetch()
            if records:
                batch_bytes.append(sum(len(r.value or b"") for r in records))
            return records

        consumer.next_batch = recording_fetch  # type: ignore[method-assign]
        inflight, paused, held = [], [], []

        async def sample() -> None:
            while True:
                inflight.append(consumer.inflight_bytes)
                held.append(consumer.held_bytes)
                paused.append(bool(consumer.client.paused()))
                await asyncio.sleep(0.002)

        sampler = asyncio.create_task(sample())
        try:
            requests = [make_request("vision", "classify", page, request_id=f"bb-{i}") for i in range(60)]
            results = await exchange(settings, "vision", requests)
        finally:
            sampler.cancel()
    assert len(results) == 60 and all(r.status is ResultStatus.OK for r in results.values())
    assert batch_bytes and max(batch_bytes) <= 3 * size
    assert any(paused), "partitions were never paused for bytes"
    # Decoded pages (224 px float tensors, 7x the PNG) counted against the budget while they waited.
    assert max(held) >= 3 * 224 * 224 * 4 and held[-1] == 0
    # Checked before each fetch, so the bound is exceeded by at most one batch.
    assert max(inflight) <= 8 * size + 3 * size


async def test_results_for_one_key_keep_request_order_across_models(
    settings: Settings, running: Running
) -> None:
    reply = f"ai.results.replies-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
    await admin.start()
    await admin.create_topics([NewTopic(reply, num_partitions=1, replication_factor=1)])
    await admin.close()
    slow, fast = rotated_page(90, fmt="JPEG"), solid((1, 2, 3))
    requests = []
    for i in range(120):
        # Alternate a slow real model and a fast one: lanes finish out of order.
        payload, model = (slow, "orientation") if i % 3 == 0 else (fast, "mean-color")
        requests.append(
            make_request("vision", "classify", payload, model=model, request_id=f"{i:04d}", reply_topic=reply)
        )
    async with connect(settings) as client:
        async with client.reader(reply) as reader:
            for req in requests:  # one key: one partition, in this order
                value = client.codec.encode_record(req)
                await client._producer.send(settings.topics.requests("vision"), value, key=b"same-key")
            await client._producer.flush()
            order: list[str] = []
            deadline = time.monotonic() + 60
            while len(order) < len(requests) and time.monotonic() < deadline:
                order += [
                    client.codec.decode_record(r.value, VisionResult).request_id
                    for r in await reader.read(0.5)
                ]
    assert order == [r.request_id for r in requests]


async def test_oversized_request_is_dead_lettered_and_the_stream_continues(
    kafka_bootstrap: str, registry_file
) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(kafka_bootstrap, registry_file, limits={"max_message_bytes": 20_000})
    async with serving(settings):
        async with connect(settings) as client:
            async with client.reader(settings.topics.dead_letter) as dlq:
                big = make_request("vision", "classify", b"\x89PNG" + b"\x00" * 50_000, model="mean-color")
                meta = await client.send_raw(
                    settings.topics.requests("vision"), client.codec.encode_record(big)
                )
                after = await client.request(
                    make_request("vision", "classify", solid((9, 9, 9)), model="mean-color")
                )
                letters = [client.decode_dead_letter(r.value) for r in await dlq.read(5)]
    assert after is not None and after.status is ResultStatus.OK
    assert [(d.error_code, d.offset, len(d.value or b"")) for d in letters] == [
        ("PAYLOAD_TOO_LARGE", meta.offset, len(client.codec.encode_record(big)))
    ]


async def test_a_result_too_large_to_publish_becomes_an_error_and_a_dead_letter(
    kafka_bootstrap: str, registry_file
) -> None:  # type: ignore[no-untyped-def]
    settings = isolated_settings(kafka_bootstrap, registry_file, limits={"max_result_bytes": 2_000})
    async with serving(settings):
        async with connect(settings) as client:
            async with client.reader(settings.topics.dead_letter) as dlq:
                # The metadata is echoed into the result, making it larger than the producer may send.
                fat = make_request(
                    "vision", "classify", solid((1, 1, 1)), model="mean-color", metadata={"blob": "x" * 3000}
                )
                await client.send(fat)
                after = await client.request(
                    make_request("vision", "classify", solid((9, 9, 9)), model="mean-color")
                )
                letters = [client.decode_dead_letter(r.value) for r in await dlq.read(5)]
    assert after is not None and after.status is ResultStatus.OK
    assert [d.error_code for d in letters] == ["RESULT_TOO_LARGE"]
    assert letters[0].request_id is None or letters[0].request_id == fat.request_id
