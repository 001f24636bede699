"""altlas on a real 3-node KRaft cluster: replicated topics, and a leader broker SIGKILLed mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.app.topics import ensure_topics, topic_plan
from altlas.orchestration.clients.client import make_request
from altlas.orchestration.devtools.localcluster import LocalCluster
from tests.conftest import connect, isolated_settings, serving
from tests.images import solid
from tests.processes import ResultCounter

pytestmark = pytest.mark.chaos


async def _layout(settings: Settings, topic: str) -> tuple[list[int], str]:
    """Replicas per partition and the effective min.insync.replicas of ``topic``."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        replicas = [len(p["replicas"]) for p in described["partitions"]]
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})]
        )
        entries = response.to_object()["resources"][0]["config_entries"]
        min_isr = next(e["config_value"] for e in entries if e["config_names"] == "min.insync.replicas")
        return replicas, min_isr
    finally:
        await admin.close()


def _cluster_settings(cluster: LocalCluster, registry: Path, delivery: str = "at_least_once") -> Settings:
    return isolated_settings(
        cluster.bootstrap,
        registry,
        modalities=["vision"],
        delivery=delivery,
        cache={"enabled": False},
        kafka={"session_timeout_ms": 6000},
        topics={"partitions": 3},
        batching={"fetch_max_records": 64, "max_batch": 16},
    )


async def test_altlas_topics_on_the_cluster_get_3_replicas_and_min_isr_2(
    kafka_cluster: LocalCluster, registry_file: Path
) -> None:
    settings = _cluster_settings(kafka_cluster, registry_file)
    plan = topic_plan(settings)
    await ensure_topics(client_kwargs(settings.kafka), plan, partitions=3, replication_factor=None)
    for topic in plan:
        # Each broker learns of a new topic from the metadata log a moment later: ask until all know.
        for _ in range(40):
            try:
                layout = await _layout(settings, topic)
            except Exception as exc:
                layout = ([], repr(exc))
            if layout == ([3, 3, 3], "2"):
                break
            await asyncio.sleep(0.25)
        assert layout == ([3, 3, 3], "2"), topic


async def test_a_node_stopped_either_way_rejoins_on_its_data(kafka_cluster: LocalCluster) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        await asyncio.to_thread(kafka_cluster.stop_node, 3, sig)
        assert not kafka_cluster.nodes[3].running
        await asyncio.to_thread(kafka_cluster.start_node, 3)
        await asyncio.to_thread(kafka_cluster.wait_for_brokers, 3)


async def test_a_rolling_restart_leaves_every_partition_led_and_in_sync(
    kafka_cluster: LocalCluster, registry_file: Path
) -> None:
    settings = _cluster_settings(kafka_cluster, registry_file)
    topic = settings.topics.requests("vision")
    await ensure_topics(client_kwargs(settings.kafka), {topic: {}}, partitions=3, replication_factor=None)
    pids = {node_id: node.state.pid for node_id, node in kafka_cluster.nodes.items() if node.state}
    await asyncio.to_thread(kafka_cluster.rolling_restart)
    assert all(node.state and node.state.pid != pids[i] for i, node in kafka_cluster.nodes.items())
    assert sorted(kafka_cluster.leaders(topic)) == [0, 1, 2]
    assert all(leader in kafka_cluster.nodes for leader in kafka_cluster.leaders(topic).values())


async def _send(settings: Settings, n: int, prefix: str) -> set[str]:
    requests = [
        make_request(
            "vision", "classify", solid((i % 256, 9, 9)), model="mean-color@1", request_id=f"{prefix}{i}"
        )
        for i in range(n)
    ]
    async with connect(settings) as client:
        await client.send_many(requests)
    return {r.request_id for r in requests}


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
async def test_the_leader_broker_sigkilled_mid_run_loses_no_request(
    kafka_cluster: LocalCluster, registry_file: Path, delivery: str
) -> None:
    settings = _cluster_settings(kafka_cluster, registry_file, delivery)
    topics = [settings.topics.requests("vision"), settings.topics.results("vision")]
    async with serving(settings):
        ids = await _send(settings, 3000, "before-")
        async with ResultCounter(settings, read_committed=delivery == "exactly_once") as counter:
            while len(counter.counts) < 100:
                await counter.poll(0.1)
            victim = await asyncio.to_thread(kafka_cluster.busiest_leader, topics)
            await asyncio.to_thread(kafka_cluster.stop_node, victim, signal.SIGKILL)
            assert len(counter.counts) < len(ids), "the backlog was answered before the kill"
            try:
                ids |= await _send(settings, 300, "during-")
                await asyncio.sleep(10)
            finally:
                await asyncio.to_thread(kafka_cluster.start_node, victim)
            ids |= await _send(settings, 300, "after-")
            missing = await counter.wait_for(ids, 120)
    assert missing == set(), f"lost {len(missing)} of {len(ids)} requests"
    if delivery == "exactly_once":
        assert {rid: n for rid, n in counter.counts.items() if n > 1} == {}


def test_broker_up_brokers_3_starts_a_cluster_and_broker_down_stops_it(tmp_path: Path) -> None:
    from altlas.orchestration.devtools.localcluster import _describe
    from altlas.orchestration.devtools.localkafka import _alive

    env = {**os.environ, "ALTLAS_LOCAL_BROKER__STATE_DIR": str(tmp_path / "state")}

    def altlas(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "altlas.orchestration", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, check=False)

    up = altlas("broker", "up", "--brokers", "3")
    assert up.returncode == 0, up.stderr
    (line,) = up.stdout.strip().splitlines()
    bootstrap = line.removeprefix("bootstrap=")
    pids = [node["pid"] for node in json.loads((tmp_path / "state" / "cluster.json").read_text())["nodes"]]
    try:
        assert len(bootstrap.split(",")) == 3
        assert len(_describe(bootstrap, "describe_cluster")["brokers"]) == 3
        assert altlas("broker", "up", "--brokers", "3").stdout.strip() == line  # reports the running one
    finally:
        down = altlas("broker", "down")
    assert down.returncode == 0, down.stderr
    assert not any(_alive(pid) for pid in pids)
    assert not (tmp_path / "state" / "cluster.json").exists()
