"""Exactly-once: answers and offsets commit together; aborts are retried, zombies fenced."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import build_codec
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.schemas.types import ResultStatus, VisionResult
from tests.conftest import connect, isolated_settings, serving
from tests.images import solid


async def _read_committed(settings: Settings, want: int, timeout_s: float = 60) -> list[VisionResult]:
    from aiokafka import AIOKafkaConsumer

    from altlas.orchestration.clients.client import topic_partitions

    codec = build_codec(settings)
    consumer = AIOKafkaConsumer(
        group_id=None,
        isolation_level="read_committed",
        enable_auto_commit=False,
        **client_kwargs(settings.kafka),
    )
    await consumer.start()
    from aiokafka import TopicPartition

    topic = settings.topics.results("vision")
    tps = [TopicPartition(topic, p) for p in await topic_partitions(consumer, topic)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    out: list[VisionResult] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < want and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            out += [codec.decode_record(r.value, VisionResult) for recs in batches.values() for r in recs]
        out += [
            codec.decode_record(r.value, VisionResult)
            for recs in (await consumer.getmany(timeout_ms=1000)).values()
            for r in recs
        ]
    finally:
        await consumer.stop()
    return out


async def test_exactly_once_answers_each_request_once_for_read_committed_readers(
    kafka_bootstrap: str, registry_file: Path
) -> None:
    settings = isolated_settings(
        kafka_bootstrap, registry_file, modalities=["vision"], delivery="exactly_once"
    )
    async with serving(settings) as run:
        async with connect(settings) as client:
            requests = [
                make_request("vision", "classify", solid((i, 3, 3)), model="mean-color", request_id=f"e{i}")
                for i in range(300)
            ]
            await client.send_many(requests)
            results = await _read_committed(settings, 300)
        worker = run.orchestrator.streams["vision"]
        assert worker.transactions is not None and worker.transactions.commits >= 1
    ids = [r.request_id for r in results]
    assert sorted(ids) == sorted(f"e{i}" for i in range(300)) and len(ids) == len(set(ids))
    assert all(r.status is ResultStatus.OK for r in results)


async def test_an_aborted_transaction_is_rewound_and_retried_without_duplicates(
    kafka_bootstrap: str, registry_file: Path
) -> None:
    settings = isolated_settings(
        kafka_bootstrap, registry_file, modalities=["vision"], delivery="exactly_once"
    )
    async with serving(settings) as run:
        transactions = run.orchestrator.streams["vision"].transactions
        assert transactions is not None
        # Break the first two commits the way a coordinator error would, after results were produced.
        real_commit = transactions._producer.commit_transaction
        failures = {"left": 2}

        async def flaky_commit() -> None:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise RuntimeError("simulated: coordinator went away during commit")
            await real_commit()

        transactions._producer.commit_transaction = flaky_commit  # type: ignore[method-assign]
        async with connect(settings) as client:
            requests = [
                make_request("vision", "classify", solid((i, 9, 9)), model="mean-color", request_id=f"a{i}")
                for i in range(50)
            ]
            await client.send_many(requests)
            results = await _read_committed(settings, 50)
    ids = [r.request_id for r in results]
    assert sorted(ids) == sorted(f"a{i}" for i in range(50)) and len(ids) == len(set(ids))
    assert transactions.aborts == 2


async def test_a_second_instance_with_the_same_transactional_id_fences_the_zombie(
    kafka_bootstrap: str, registry_file: Path
) -> None:
    first = isolated_settings(
        kafka_bootstrap,
        registry_file,
        modalities=["vision"],
        delivery="exactly_once",
        kafka={"transactional_id": "same"},
    )
    second = first.model_copy(update={"instance_id": first.instance_id + "-b"})
    # The successor initialises the same transactional id, which fences the first (the zombie);
    # the zombie, stopped by that, is only awaited when the block ends.
    async with serving(first) as zombie, serving(second):
        async with AltlasClient(client_kwargs(first.kafka), build_codec(first), first.topics) as client:
            requests = [
                make_request("vision", "classify", solid((i, 1, 1)), model="mean-color", request_id=f"z{i}")
                for i in range(40)
            ]
            await client.send_many(requests)
            results = await _read_committed(first, 40)
            await asyncio.wait_for(zombie.task, 30)  # the fenced instance stops by itself
    assert zombie.orchestrator.exit_code == 3
    ids = [r.request_id for r in results]
    assert sorted(ids) == sorted(f"z{i}" for i in range(40)) and len(ids) == len(set(ids))
