"""Shared benchmark plumbing: a broker, topics, pre-loaded requests, broker-side timing.

Throughput is measured from the broker's LogAppendTime of the first and last
result (the output topic is created with ``message.timestamp.type=LogAppendTime``),
so process start-up, model loading and group joins are not counted for anyone.
Latency at a steady rate is result append time minus the request's created_at.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.builders, shared with the test suite


@contextmanager
def broker(heap: str = "512m") -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS, or a local broker for the duration of the bench."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    from altlas.orchestration.app.settings import LocalBrokerSettings
    from altlas.orchestration.devtools.kafka_dist import KafkaDistribution
    from altlas.orchestration.devtools.localkafka import LocalBroker

    lb = LocalBrokerSettings()
    b = LocalBroker(
        KafkaDistribution(lb.kafka_version, lb.scala_version), heap=heap, jvm_opts="-XX:+UseSerialGC"
    )
    b.start()
    try:
        yield b.bootstrap
    finally:
        b.stop()


async def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    *,
    log_append_time: AbstractSet[str] = frozenset(),
    replication_factor: int | None = 1,
) -> None:
    """Create fresh topics; those in ``log_append_time`` get broker-assigned timestamps.

    ``replication_factor`` None takes the cluster's default (aiokafka sends -1 only beside an
    empty replica assignment)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=parts,
                    replication_factor=replication_factor if replication_factor is not None else -1,
                    replica_assignments=None if replication_factor is not None else {},
                    topic_configs={"message.timestamp.type": "LogAppendTime"}
                    if name in log_append_time
                    else {},
                )
                for name, parts in topics.items()
            ]
        )
    finally:
        await admin.close()


async def preload(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Produce (key, value) pairs as fast as possible; returns seconds taken."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=10,
        max_batch_size=256 * 1024,
        max_request_size=4 * 2**20,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


@dataclass
class Collected:
    """Results read back from an output topic."""

    count: int
    unique: int
    first_ms: int
    last_ms: int
    latencies_ms: list[float]
    created: list[int]

    @property
    def rps(self) -> float:
        """Results per second between the first and the last append."""
        span = max(1, self.last_ms - self.first_ms) / 1000
        return (self.count - 1) / span if self.count > 1 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in ms (q in 0..100)."""
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, round(q / 100 * (len(data) - 1)))]


async def collect(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float,
    key_of: Callable[[Any], str],
    created_ms: Callable[[Any], int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Collected:
    """Read ``topic`` from the beginning until ``expected`` unique keys arrived (or timeout)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 2**20,
    )
    await consumer.start()
    try:
        from altlas.orchestration.clients.client import topic_partitions

        parts = await topic_partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: set[str] = set()
        count, first, last = 0, None, 0
        latencies: list[float] = []
        created: list[int] = []
        deadline = time.monotonic() + timeout_s
        while len(seen) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batches.values():
                for rec in records:
                    count += 1
                    seen.add(key_of(rec))
                    first = rec.timestamp if first is None else min(first, rec.timestamp)
                    last = max(last, rec.timestamp)
                    if created_ms is not None:
                        sent = created_ms(rec)
                        created.append(sent)
                        latencies.append(rec.timestamp - sent)
            if progress:
                progress(len(seen))
        return Collected(count, len(seen), first or 0, last, latencies, created)
    finally:
        await consumer.stop()


def orchestrator_config(
    modality: str,
    bootstrap: str,
    topic_in: str,
    topic_out: str,
    registry: Path,
    *,
    group: str,
    create: bool,
    **sections: Any,
) -> dict[str, Any]:
    """An orchestrator config on a bench's own topics (status, commands and dead letters beside
    its input), one registry, and whatever other ``sections`` (batching, cache, metrics, ...)
    the bench sets; ``create`` lets altlas create the topics the bench did not."""
    topics: dict[str, Any] = {
        f"{modality}_requests": topic_in,
        f"{modality}_results": topic_out,
        "model_status": f"{topic_in}.status",
        "model_commands": f"{topic_in}.commands",
        "dead_letter": f"{topic_in}.dlq",
    }
    if create:
        topics["create"] = True
    return {
        "modalities": [modality],
        "kafka": {"bootstrap_servers": bootstrap, "group_id": group},
        "topics": topics,
        "models": {"registry": str(registry)},
        **sections,
    }


def start_orchestrator(config: dict[str, Any], path: Path) -> subprocess.Popen[bytes]:
    """Write ``config`` to ``path`` and run altlas on it in its own process, as an operator would."""
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen([sys.executable, "-m", "altlas.orchestration", "run", "--config", str(path)])


def median(values: list[float]) -> float:
    """Median (runs of a bench are few; the median resists one noisy run)."""
    return statistics.median(values)
