"""Cluster chaos matrix: five faults x two guarantees, 3 altlas processes in one group, 3 brokers.

Each run streams 5,000 mixed requests (two model versions with different batch
sizes, undecodable payloads and unknown models, whose error results count as
answers) at a steady rate, injects one fault after 5 s, and counts answers per
request id with a read_committed reader. Lost must be 0 everywhere, duplicated
0 with exactly-once; at-least-once duplicates are reported, not hidden. The
table (``build/cluster-chaos.md``, and printed at the end) is the one kept in
docs/operations.md. One cluster serves the whole module.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import build_codec
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.app.topics import ensure_topics, topic_plan
from altlas.orchestration.clients.client import make_request, topic_partitions
from altlas.orchestration.devtools.localcluster import LocalCluster
from altlas.schemas.types import VisionResult
from tests.conftest import isolated_settings, write_config
from tests.images import solid
from tests.processes import start_altlas, stop_altlas

pytestmark = pytest.mark.chaos

REQUESTS = 5000
SEND_S = 20.0  # the 5,000 arrive over this long: a steady 250/s the three instances keep up with
FAULT_AT_S = 5.0
PARTITIONS = 6
TABLE = Path(__file__).resolve().parent.parent / "build" / "cluster-chaos.md"


@dataclass
class Outcome:
    """One row of the table."""

    scenario: str
    delivery: str
    lost: int
    duplicated: int
    drain_s: float
    p99_fault_ms: float
    wall_s: float


@pytest.fixture(scope="module")
def table(request: pytest.FixtureRequest) -> Iterator[list[Outcome]]:
    """Rows collected by the module's runs; printed and written to build/ at the end."""
    rows: list[Outcome] = []
    yield rows
    if not rows:
        return
    head = (
        "scenario",
        "guarantee",
        "lost",
        "duplicated",
        "time to drain (s)",
        "p99 during the fault (ms)",
        "run (s)",
    )
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = (
            r.scenario,
            r.delivery,
            r.lost,
            r.duplicated,
            f"{r.drain_s:.1f}",
            f"{r.p99_fault_ms:.0f}",
            f"{r.wall_s:.0f}",
        )
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    TABLE.parent.mkdir(exist_ok=True)
    TABLE.write_text("\n".join(lines) + "\n")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)


class Fleet:
    """altlas processes in one group, each with a stable id (instance_id and instance_ordinal)."""

    def __init__(self, base: Settings, workdir: Path) -> None:
        self.base, self.workdir = base, workdir
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._starts: dict[int, int] = {}  # "altlas started" lines in k's log before its latest start

    def log(self, k: int) -> Path:
        return self.workdir / f"altlas-{k}.log"

    def start(self, k: int) -> subprocess.Popen[bytes]:
        settings = self.base.model_copy(
            update={"instance_id": f"{self.base.instance_id}-{k}", "instance_ordinal": k}
        )
        config = write_config(settings, self.workdir / f"altlas-{k}.yaml")
        self._starts[k] = self._logged(k)
        self.procs[k] = start_altlas(config, self.log(k))
        return self.procs[k]

    def _logged(self, k: int) -> int:
        return self.log(k).read_text(errors="replace").count("altlas started") if self.log(k).exists() else 0

    async def started(self, k: int) -> None:
        """Until instance ``k``'s latest start is serving."""
        deadline = time.monotonic() + 90
        while self._logged(k) <= self._starts[k]:
            assert self.procs[k].poll() is None, self.log(k).read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"instance {k} did not start"
            await asyncio.sleep(0.1)

    async def stop(self, k: int, sig: int = signal.SIGTERM) -> None:
        await stop_altlas(self.procs.pop(k), sig)

    async def stop_all(self) -> None:
        for k in list(self.procs):
            proc = self.procs[k]
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a zombie left stopped by a failed test
        await asyncio.gather(*(self.stop(k) for k in list(self.procs)))


async def members(settings: Settings) -> int:
    """Members of the vision group (0 while it has no coordinator)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka, client_suffix="chaos-admin"))
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([f"{settings.kafka.group_id}.vision"])
        state = response.to_object()["groups"][0]
        return len(state["members"]) if state["state"] == "Stable" else -1
    except KafkaError:
        return 0
    finally:
        await admin.close()


async def until_members(settings: Settings, count: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while await members(settings) != count:
        assert time.monotonic() < deadline, f"the group never became stable with {count} members"
        await asyncio.sleep(0.2)


def mixed_requests(tag: str) -> list[Any]:
    """Two model versions (batches of 32 and 8), undecodable payloads and unknown models."""
    rng = random.Random(18)
    out = []
    for i in range(REQUESTS):
        roll = rng.random()
        rid = f"{tag}-{i}"
        if roll < 0.02:
            out.append(
                make_request("vision", "classify", b"not an image", model="mean-color@1", request_id=rid)
            )
        elif roll < 0.04:
            out.append(
                make_request("vision", "classify", solid((1, 2, 3)), model="no-such-model", request_id=rid)
            )
        else:
            model = "mean-color@2" if roll < 0.25 else "mean-color@1"
            out.append(
                make_request("vision", "classify", solid((i % 256, 7, 7)), model=model, request_id=rid)
            )
    return out


@dataclass
class Traffic:
    """Sends the requests at a steady rate and remembers when each left."""

    settings: Settings
    sent_at: dict[str, float] = field(default_factory=dict)
    ended: float = 0.0

    async def run(self, requests: list[Any]) -> None:
        codec = build_codec(self.settings)
        topic = self.settings.topics.requests("vision")
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            **client_kwargs(self.settings.kafka, client_suffix="load"),
        )
        await producer.start()
        try:
            start, tick = time.monotonic(), 0.1
            per_tick = max(1, round(len(requests) * tick / SEND_S))
            pending: list[tuple[Any, asyncio.Future[Any]]] = []
            for n in range(0, len(requests), per_tick):
                await asyncio.sleep(max(0.0, start + n / per_tick * tick - time.monotonic()))
                for req in requests[n : n + per_tick]:
                    self.sent_at[req.request_id] = time.monotonic()
                    value = codec.encode_record(req, topic=topic)
                    pending.append((req, await producer.send(topic, value, key=req.request_id.encode())))
            for req, future in pending:  # a send the cluster failed for good is sent again
                while True:
                    try:
                        await future
                        break
                    except KafkaError:
                        await asyncio.sleep(0.5)
                        value = codec.encode_record(req, topic=topic)
                        future = await producer.send(topic, value, key=req.request_id.encode())
        finally:
            self.ended = time.monotonic()
            await producer.stop()


class Tally:
    """Answers per request id, read_committed, with the moment each was first seen."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = build_codec(settings)
        self.counts: dict[str, int] = {}
        self.first: dict[str, float] = {}
        self.by: dict[str, list[str]] = {}  # request id -> "instance@partition:offset" of each answer
        self._consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            **client_kwargs(settings.kafka, client_suffix="tally"),
        )

    async def run(self, stop: asyncio.Event) -> None:
        await self._consumer.start()
        try:
            topic = self.settings.topics.results("vision")
            tps = [TopicPartition(topic, p) for p in await topic_partitions(self._consumer, topic)]
            self._consumer.assign(tps)
            await self._consumer.seek_to_beginning(*tps)
            while not stop.is_set():
                batches = await self._consumer.getmany(timeout_ms=100)
                now = time.monotonic()
                for records in batches.values():
                    for rec in records:
                        rid = self.codec.decode_record(rec.value, VisionResult).request_id
                        self.counts[rid] = self.counts.get(rid, 0) + 1
                        self.first.setdefault(rid, now)
                        who = dict(rec.headers).get("altlas.instance", b"?").decode()
                        self.by.setdefault(rid, []).append(f"{who}@{rec.partition}:{rec.offset}")
        finally:
            await self._consumer.stop()


async def copies_sent(settings: Settings) -> dict[str, int]:
    """How many times each request id is in the request topic (a resent request is answered twice)."""
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **client_kwargs(settings.kafka))
    await consumer.start()
    try:
        topic = settings.topics.requests("vision")
        tps = [TopicPartition(topic, p) for p in await topic_partitions(consumer, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[str, int] = {}
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    out[rec.key.decode()] = out.get(rec.key.decode(), 0) + 1
        return out
    finally:
        await consumer.stop()


Fault = Callable[["Run"], Awaitable[None]]


@dataclass
class Run:
    """What a fault needs: the cluster, the fleet, the settings and the topics."""

    cluster: LocalCluster
    fleet: Fleet
    settings: Settings


async def broker_killed(run: Run) -> None:
    """SIGKILL the broker leading the most request and result partitions; start it 8 s later."""
    topics = [run.settings.topics.requests("vision"), run.settings.topics.results("vision")]
    victim = await asyncio.to_thread(run.cluster.busiest_leader, topics)
    await asyncio.to_thread(run.cluster.stop_node, victim, signal.SIGKILL)
    await asyncio.sleep(8)
    await asyncio.to_thread(run.cluster.start_node, victim)


async def brokers_rolled(run: Run) -> None:
    """Controlled shutdown and restart of each broker in turn, each once the cluster is in sync."""
    await asyncio.to_thread(run.cluster.rolling_restart, signal.SIGTERM, 90.0)


async def instances_rolled(run: Run) -> None:
    """SIGTERM each altlas instance in turn and start it again (same id: it fences its predecessor)."""
    for k in sorted(run.fleet.procs):
        await run.fleet.stop(k)
        run.fleet.start(k)
        await run.fleet.started(k)


async def zombie(run: Run) -> None:
    """SIGSTOP one instance until the group moved its partitions, then SIGCONT it."""
    proc = run.fleet.procs[0]
    proc.send_signal(signal.SIGSTOP)
    try:
        await until_members(run.settings, len(run.fleet.procs) - 1, 60)
    finally:
        proc.send_signal(signal.SIGCONT)
    await until_members(run.settings, len(run.fleet.procs), 60)


async def scaled(run: Run) -> None:
    """1 instance -> 3 -> 1, while the requests stream in."""
    for k in (1, 2):
        run.fleet.start(k)
    await asyncio.gather(run.fleet.started(1), run.fleet.started(2))
    await until_members(run.settings, 3, 60)
    await asyncio.sleep(3)
    await asyncio.gather(run.fleet.stop(1), run.fleet.stop(2))


SCENARIOS: dict[str, tuple[Fault, int]] = {
    "leader broker SIGKILLed, back after 8 s": (broker_killed, 3),
    "rolling restart of the 3 brokers": (brokers_rolled, 3),
    "rolling restart of the 3 instances": (instances_rolled, 3),
    "zombie: SIGSTOP until its partitions move, SIGCONT": (zombie, 3),
    "scale 1 -> 3 -> 1 instances": (scaled, 1),
}


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_cluster_fault_loses_nothing_and_exactly_once_doubles_nothing(
    kafka_cluster: LocalCluster,
    registry_file: Path,
    tmp_path: Path,
    table: list[Outcome],
    scenario: str,
    delivery: str,
) -> None:
    began = time.monotonic()
    fault, instances = SCENARIOS[scenario]
    await asyncio.to_thread(kafka_cluster.wait_in_sync, 90.0)
    settings = isolated_settings(
        kafka_cluster.bootstrap,
        registry_file,
        modalities=["vision"],
        delivery=delivery,
        cache={"enabled": False},
        kafka={"session_timeout_ms": 6000},
        topics={"partitions": PARTITIONS, "create": False},
        batching={"fetch_max_records": 128, "max_batch": 32},
        process={"drain_timeout_s": 10.0},
    )
    await ensure_topics(
        client_kwargs(settings.kafka), topic_plan(settings), partitions=PARTITIONS, replication_factor=None
    )
    fleet = Fleet(settings, tmp_path)
    stop_tally = asyncio.Event()
    tally = Tally(settings)
    traffic = Traffic(settings)
    requests = mixed_requests(uuid.uuid4().hex[:6])
    try:
        for k in range(instances):
            fleet.start(k)
        await asyncio.gather(*(fleet.started(k) for k in range(instances)))
        await until_members(settings, instances)
        tally_task = asyncio.create_task(tally.run(stop_tally))
        sending = asyncio.create_task(traffic.run(requests))
        await asyncio.sleep(FAULT_AT_S)
        fault_start = time.monotonic()
        await fault(Run(kafka_cluster, fleet, settings))
        fault_end = time.monotonic()
        await sending
        ids = {r.request_id for r in requests}
        deadline = time.monotonic() + 120
        while ids - set(tally.counts) and time.monotonic() < deadline:
            assert not tally_task.done(), tally_task
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # late duplicates
    finally:
        stop_tally.set()
        await fleet.stop_all()
    copies = await copies_sent(settings)
    lost = ids - set(tally.counts)
    duplicated = sum(1 for rid, n in tally.counts.items() if n > copies.get(rid, 1))
    last_answer = max(tally.first.values(), default=time.monotonic())
    during = [
        tally.first[r] - sent
        for r, sent in traffic.sent_at.items()
        if fault_start <= sent <= fault_end and r in tally.first
    ]
    during.sort()
    p99 = during[min(len(during) - 1, round(0.99 * (len(during) - 1)))] * 1000 if during else float("nan")
    outcome = Outcome(
        scenario,
        delivery,
        len(lost),
        duplicated,
        max(0.0, last_answer - max(fault_end, traffic.ended)),
        p99,
        time.monotonic() - began,
    )
    table.append(outcome)
    assert not lost, f"{outcome}: lost {sorted(lost)[:10]}"
    if delivery == "exactly_once":
        twice = {rid: tally.by.get(rid) for rid, n in tally.counts.items() if n > copies.get(rid, 1)}
        assert duplicated == 0, f"{outcome}: {list(twice.items())[:5]}"
