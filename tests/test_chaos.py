"""Faults to survive: SIGKILL mid-batch, broker restarts, rebalances; no loss, and no duplicates in EOS."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import make_request
from altlas.orchestration.devtools.kafka_dist import KafkaDistribution
from altlas.orchestration.devtools.localkafka import LocalBroker
from tests.builders import mean_color_variant
from tests.conftest import KAFKA_VERSION, connect, create_topics, isolated_settings, serving, write_config
from tests.images import solid
from tests.processes import ResultCounter, start_altlas, stop_altlas, wait_started

pytestmark = pytest.mark.chaos


@pytest.fixture(scope="module")
def chaos_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model slow enough (a few ms per request) that a run spans seconds and kills land mid-batch."""
    root = tmp_path_factory.mktemp("chaos")
    model = mean_color_variant(root / "busy.onnx", slow_layers=60, slow_width=512)
    path = root / "models.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "id": "busy",
                        "task": "vision.classify",
                        "backend": "onnx",
                        "path": str(model),
                        "params": {"preprocess": {"resize": 4}, "labels_metadata_key": "labels"},
                        "metadata": {"max_batch": 32},
                    }
                ],
                "defaults": {"vision.classify": "busy"},
            }
        )
    )
    return path


def _settings(bootstrap: str, registry: Path, delivery: str, **extra: Any) -> Settings:
    return isolated_settings(
        bootstrap,
        registry,
        modalities=["vision"],
        delivery=delivery,
        cache={"enabled": False},
        kafka={"session_timeout_ms": 6000, "transactional_id": f"chaos-{delivery}"},
        topics={"partitions": 6},
        batching={"fetch_max_records": 64, "max_batch": 16},  # small steps, so kills land mid-run
        **extra,
    )


async def _send(settings: Settings, n: int, prefix: str) -> set[str]:
    requests = [
        make_request("vision", "classify", solid((i % 256, 7, 7)), request_id=f"{prefix}{i}")
        for i in range(n)
    ]
    async with connect(settings) as client:
        await client.send_many(requests)
    return {r.request_id for r in requests}


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_five_sigkills_during_2000_requests_lose_nothing(
    kafka_bootstrap: str, chaos_registry: Path, tmp_path: Path, delivery: str
) -> None:
    settings = _settings(kafka_bootstrap, chaos_registry, delivery)
    await create_topics(settings)
    config = write_config(settings, tmp_path / "altlas.yaml")
    log = tmp_path / "altlas.log"
    ids = await _send(settings, 2000, "k")
    rng = random.Random(5)
    async with ResultCounter(settings, read_committed=delivery == "exactly_once") as counter:
        for kill in range(5):
            proc = start_altlas(config, log)
            target = len(counter.counts) + rng.randrange(60, 150)
            deadline = time.monotonic() + 90
            while len(counter.counts) < target and time.monotonic() < deadline and proc.poll() is None:
                await counter.poll(0.1)
            assert proc.poll() is None, (
                f"orchestrator died by itself before kill {kill}: {log.read_text()[-2000:]}"
            )
            proc.send_signal(signal.SIGKILL)  # no shutdown, no commit: mid-batch by construction
            await asyncio.to_thread(proc.wait)
        assert len(counter.counts) < len(ids), "the run finished before the last kill"
        final = start_altlas(config, log)
        try:
            missing = await counter.wait_for(ids, 180)
        finally:
            await stop_altlas(final)
    assert missing == set(), f"lost {len(missing)} requests"
    if delivery == "exactly_once":
        duplicated = {rid: n for rid, n in counter.counts.items() if n > 1}
        assert duplicated == {}, f"{len(duplicated)} requests answered more than once"


async def test_a_broker_stopped_for_10_seconds_is_rejoined_and_the_work_finished(
    chaos_registry: Path, tmp_path: Path
) -> None:
    broker = LocalBroker(KafkaDistribution(KAFKA_VERSION))
    broker.start()
    try:
        settings = _settings(broker.bootstrap, chaos_registry, "at_least_once")
        async with serving(settings):
            first = await _send(settings, 300, "before-")
            await asyncio.sleep(1.0)
            await asyncio.to_thread(broker.stop, remove_data=False)
            await asyncio.sleep(10)
            await asyncio.to_thread(broker.restart)
            second = await _send(settings, 300, "after-")
            async with ResultCounter(settings, read_committed=False) as counter:
                missing = await counter.wait_for(first | second, 120)
    finally:
        broker.stop()
    assert missing == set(), f"lost {len(missing)} requests across the broker restart"


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_an_instance_joining_and_leaving_mid_run_loses_nothing(
    kafka_bootstrap: str, chaos_registry: Path, tmp_path: Path, delivery: str
) -> None:
    settings = _settings(kafka_bootstrap, chaos_registry, delivery)
    await create_topics(settings)
    first_cfg = write_config(settings, tmp_path / "a.yaml")
    second = settings.model_copy(
        update={
            "instance_id": settings.instance_id + "-b",
            "kafka": settings.kafka.model_copy(update={"transactional_id": f"chaos-{delivery}-b"}),
        }
    )
    second_cfg = write_config(second, tmp_path / "b.yaml")
    ids = await _send(settings, 1500, "r")
    async with ResultCounter(settings, read_committed=delivery == "exactly_once") as counter:
        a = start_altlas(first_cfg, tmp_path / "a.log")
        b = None
        try:
            while len(counter.counts) < 200:
                await counter.poll(0.1)
            b = start_altlas(second_cfg, tmp_path / "b.log")  # joins: partitions move
            await wait_started(tmp_path / "b.log")
            # A second wave, sent once both run: the first may be done by now, and the
            # second instance must leave while there is still work to hand back.
            ids |= await _send(settings, 3000, "s")
            seen = len(counter.counts)
            while len(counter.counts) < seen + 200:
                await counter.poll(0.1)
            assert len(counter.counts) < len(ids), "the run finished before the second instance left"
            assert await stop_altlas(b) == 0  # leaves cleanly: partitions move back
            b = None
            missing = await counter.wait_for(ids, 180)
        finally:
            await stop_altlas(a)
            if b is not None:  # the test failed before b left: never leave it running
                await stop_altlas(b)
    assert missing == set(), f"lost {len(missing)} requests"
    if delivery == "exactly_once":
        assert {rid: n for rid, n in counter.counts.items() if n > 1} == {}
