"""Exactly-once in a group: a member whose partitions were revoked mid-batch commits nothing for them.

aiokafka sends transactional offsets without the group generation (no KIP-447), so
the broker would accept them from a member that gave the partition up; altlas drops
that work itself (consumers/ownership.py). Here a real second member joins while
the first has batches in its model, long past the revocation's wait; and a new
owner waits for the open transaction of a predecessor frozen just before its
commit (consumers/stable_offsets.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from altlas.consumers.stable_offsets import stable_committed
from altlas.models.runtime import BACKENDS
from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.orchestration.serving.loop import StreamWorker
from tests import hanging_model
from tests.conftest import connect, isolated_settings, serving
from tests.images import solid

PARAMS = {"preprocess": {"resize": 4}, "labels_metadata_key": "labels"}


class _Taker(ConsumerRebalanceListener):  # type: ignore[misc]
    """The second member: notes the partitions it was given (and never answers or commits them)."""

    def __init__(self) -> None:
        self.given: set[int] = set()

    async def on_partitions_revoked(self, revoked: object) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.given |= {tp.partition for tp in assigned}


async def _offsets_once_revoked(worker: StreamWorker, admin: AIOKafkaAdminClient) -> dict[int, int]:
    """The group's committed offsets the moment the first member has finished its revocation."""
    epoch, deadline = worker.consumer.ownership.epoch, time.monotonic() + 30
    while worker.consumer.ownership.epoch == epoch:
        assert time.monotonic() < deadline, "the first member was never revoked"
        await asyncio.sleep(0.005)
    offsets = await admin.list_consumer_group_offsets(worker.consumer.group_id)
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


async def test_a_batch_in_flight_across_a_revocation_commits_nothing_for_the_revoked_partition(
    kafka_bootstrap: str,
    tmp_path: Path,
    models_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(BACKENDS, "hanging-onnx", "tests.hanging_model:HangingOnnxRuntime")
    monkeypatch.setattr(hanging_model, "HANG_S", 1.0)  # a second per batch of 8, on any CPU
    registry = tmp_path / "models.yaml"
    entry = {"task": "vision.classify", "backend": "hanging-onnx", "params": PARAMS}
    model = {"id": "slow", "path": str(models_dir / "mean_color.onnx"), **entry, "metadata": {"max_batch": 8}}
    registry.write_text(yaml.safe_dump({"models": [model]}))
    settings = isolated_settings(
        kafka_bootstrap,
        registry,
        modalities=["vision"],
        delivery="exactly_once",
        cache={"enabled": False},
        topics={"partitions": 2},
        kafka={"session_timeout_ms": 6000},
        batching={"fetch_max_records": 8, "max_batch": 8},
    )
    caplog.set_level(logging.INFO, logger="altlas.orchestration.serving")
    requests = [
        make_request("vision", "classify", solid((i, 5, 5)), model="slow", request_id=f"rv{i}")
        for i in range(192)
    ]
    async with serving(settings) as run:
        worker = run.orchestrator.streams["vision"]
        # Revocation waits for batches in the model at most this long: they finish after it, stale.
        worker.consumer.config = dataclasses.replace(worker.consumer.config, revoke_timeout_s=0.5)
        topic = settings.topics.requests("vision")
        taker, consumer = _Taker(), None
        admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka, client_suffix="admin"))
        await admin.start()
        try:
            async with connect(settings) as client:
                await client.send_many(requests)
                deadline = time.monotonic() + 60
                while not (
                    worker.transactions and worker.transactions.commits >= 1 and worker.consumer.inflight
                ):
                    assert time.monotonic() < deadline, "no batch in flight after a first commit"
                    await asyncio.sleep(0.05)
                at_revocation = asyncio.create_task(_offsets_once_revoked(worker, admin))
                consumer = AIOKafkaConsumer(
                    group_id=worker.consumer.group_id,
                    enable_auto_commit=False,
                    isolation_level="read_committed",
                    **client_kwargs(settings.kafka, client_suffix="taker"),
                )
                await consumer.start()
                consumer.subscribe([topic], listener=taker)
                while not taker.given:  # it joins; the first member's partitions are revoked mid-batch
                    await consumer.getmany(timeout_ms=200)
                revoked_at = await asyncio.wait_for(at_revocation, 30)
                await asyncio.sleep(8)  # the stale batches leave the model and reach the committer
                requests_by_id = await _where(client, settings.topics.requests("vision"))
                kept = {rid for rid, (p, _) in requests_by_id.items() if p not in taker.given}
                counts = await _answers(client, settings.topics.results("vision"), kept, 90)
                end = {p: await consumer.committed(TopicPartition(topic, p)) or 0 for p in taker.given}
        finally:
            if consumer is not None:
                await consumer.stop()
            await admin.close()
    given = {p: revoked_at.get(p, 0) for p in taker.given}
    assert end == given, "the old member committed offsets of a partition it no longer owned"
    taken = {rid for rid, (p, off) in requests_by_id.items() if p in given and off >= given[p]}
    assert taken, "the revoked partition had nothing left to take"
    assert not taken & set(counts), "answers for the revoked partition committed by its old member"
    assert kept <= set(counts), f"lost {len(kept - set(counts))} of the partition the first member kept"
    assert {rid: n for rid, n in counts.items() if n > 1} == {}
    assert "batches of revoked partitions uncommitted" in caplog.text, "no batch was in flight across it"


async def _where(client: AltlasClient, topic: str) -> dict[str, tuple[int, int]]:
    """Request id -> (partition, offset) of every request."""
    out: dict[str, tuple[int, int]] = {}
    async with client.reader(topic, from_beginning=True) as reader:
        while batch := await reader.read(1.0):
            out.update({rec.key.decode(): (rec.partition, rec.offset) for rec in batch})
    return out


async def _answers(client: AltlasClient, topic: str, want: set[str], timeout_s: float) -> dict[str, int]:
    """Committed answers per request id, read until every id in ``want`` has one (then a little more)."""
    counts: dict[str, int] = {}
    async with client.reader(topic, from_beginning=True) as reader:
        deadline = time.monotonic() + timeout_s
        while want - set(counts) and time.monotonic() < deadline:
            for rec in await reader.read(0.5):
                counts[rec.key.decode()] = counts.get(rec.key.decode(), 0) + 1
        for rec in await reader.read(2.0):
            counts[rec.key.decode()] = counts.get(rec.key.decode(), 0) + 1
    return counts


async def test_a_new_owner_starts_after_its_predecessors_open_transaction_commits(
    kafka_bootstrap: str,
) -> None:
    """A zombie frozen between its last check and EndTxn: its offsets are pending; the new owner waits."""
    settings = isolated_settings(kafka_bootstrap, None, topics={"partitions": 1})
    topic, group = settings.topics.requests("vision"), f"{settings.kafka.group_id}.vision"
    kwargs = client_kwargs(settings.kafka)
    admin = AIOKafkaAdminClient(**kwargs)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    zombie = AIOKafkaProducer(transactional_id=f"{group}-zombie", **kwargs)
    owner = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **kwargs)
    await zombie.start()
    await owner.start()
    try:
        await zombie.begin_transaction()
        await zombie.send_and_wait(topic, b"answer")
        await zombie.send_offsets_to_transaction({TopicPartition(topic, 0): 7}, group)
        owner.subscribe([topic])
        await owner.getmany(timeout_ms=2000)  # joined: the coordinator is known

        async def wake_up() -> float:
            await asyncio.sleep(1.5)
            await zombie.commit_transaction()
            return time.monotonic()

        committed_at = asyncio.create_task(wake_up())
        offsets = await stable_committed(owner, [TopicPartition(topic, 0)], timeout_s=30)
        returned_at = time.monotonic()
    finally:
        await owner.stop()
        await zombie.stop()
    assert offsets == {TopicPartition(topic, 0): 7}
    assert returned_at >= await committed_at
