"""Horizontal scale: two and three processes in one group on six partitions share the work, losing nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import build_codec
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import AltlasClient, make_request
from tests.conftest import create_topics, isolated_settings, write_config
from tests.images import solid
from tests.processes import start_altlas, stop_altlas, wait_started


@pytest.mark.parametrize("instances", [2, 3])
async def test_instances_in_one_group_share_six_partitions_without_loss(
    kafka_bootstrap: str, registry_file: Path, tmp_path: Path, instances: int
) -> None:
    base = isolated_settings(
        kafka_bootstrap,
        registry_file,
        modalities=["vision"],
        topics={"partitions": 6},
        cache={"enabled": False},
    )
    await create_topics(base)
    procs, logs = [], []
    for n in range(instances):
        settings: Settings = base.model_copy(update={"instance_id": f"{base.instance_id}-{n}"})
        logs.append(tmp_path / f"{n}.log")
        procs.append(start_altlas(write_config(settings, tmp_path / f"{n}.yaml"), logs[-1]))
    try:
        for log in logs:  # every member owns partitions; then let the last rebalance settle
            await wait_started(log, marker="partitions assigned")
        await asyncio.sleep(2)
        requests = [
            make_request("vision", "classify", solid((i % 250, 1, 1)), model="mean-color", request_id=f"s{i}")
            for i in range(900)
        ]
        async with AltlasClient(client_kwargs(base.kafka), build_codec(base), base.topics) as client:
            async with client.reader(base.topics.results("vision")) as reader:
                await client.send_many(requests)
                by_instance: dict[str, int] = {}
                seen: set[str] = set()
                deadline = time.monotonic() + 120
                while len(seen) < len(requests) and time.monotonic() < deadline:
                    for rec in await reader.read(0.5):
                        seen.add(rec.key.decode())
                        who = dict(rec.headers)["altlas.instance"].decode()
                        by_instance[who] = by_instance.get(who, 0) + 1
    finally:
        for proc in procs:
            await stop_altlas(proc)
    assert seen == {r.request_id for r in requests}
    assert len(by_instance) == instances, by_instance  # every instance owned partitions and answered
    assert all(count >= 900 // (instances * 4) for count in by_instance.values()), by_instance
