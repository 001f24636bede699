"""A local KRaft cluster on loopback: N single-node brokers made into one cluster.

Each node is a ``LocalBroker`` (the same jars, config writer and launcher) whose
config is overridden to join a static controller quorum: every node is both
broker and controller (combined mode), has its own PLAINTEXT and CONTROLLER
ports, and its storage is formatted with one shared cluster id. Internal topics,
topics created with the broker's default replication factor, and transactions all
get replication factor ``min(N, 3)`` and min ISR one less, so one node can be
killed without the cluster refusing ``acks=all`` writes. Nodes can be killed and
started again on the same ports and data, which is what the chaos tests need.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from altlas.orchestration.app.settings import LocalBrokerSettings
from altlas.orchestration.devtools.kafka_dist import KafkaDistribution
from altlas.orchestration.devtools.localkafka import (
    BrokerState,
    LocalBroker,
    _alive,
    _run_coroutine,
    free_port,
    new_cluster_id,
    stop_processes,
)

log = logging.getLogger(__name__)

STATE_FILE = "cluster.json"


def cluster_config(size: int) -> dict[str, str]:
    """Broker settings every node shares: replication for ``size`` nodes that survives one loss."""
    rf = min(size, 3)
    min_isr = str(max(1, rf - 1))
    return {
        "offsets.topic.replication.factor": str(rf),
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": min_isr,
        "default.replication.factor": str(rf),
        "min.insync.replicas": min_isr,
    }


class LocalCluster:
    """Starts, breaks, mends and stops a local multi-node KRaft cluster."""

    def __init__(
        self,
        dist: KafkaDistribution,
        *,
        size: int = 3,
        data_dir: Path | None = None,
        heap: str = "384m",
        jvm_opts: str = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1",
        log_level: str = "WARN",
    ) -> None:
        if size < 2:
            raise ValueError("a cluster has at least 2 nodes; use LocalBroker for one")
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="altlas-kafka-cluster-"))
        self.nodes: dict[int, LocalBroker] = {
            node_id: LocalBroker(
                dist,
                data_dir=self.data_dir / f"node-{node_id}",
                heap=heap,
                jvm_opts=jvm_opts,
                log_level=log_level,
                extra_config={"node.id": str(node_id), **cluster_config(size)},
            )
            for node_id in range(1, size + 1)
        }

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma-separated, as clients take it."""
        return ",".join(node.bootstrap for node in self.nodes.values())

    def start(self, timeout_s: float = 120.0) -> str:
        """Format every node, launch them together, and wait until all are registered brokers."""
        deadline = time.monotonic() + timeout_s
        ports = _distinct_ports(2 * len(self.nodes))
        node_ports = {node_id: (ports[2 * i], ports[2 * i + 1]) for i, node_id in enumerate(self.nodes)}
        voters = ",".join(f"{node_id}@127.0.0.1:{cport}" for node_id, (_, cport) in node_ports.items())
        cluster_id = new_cluster_id()
        try:
            for node_id, node in self.nodes.items():
                node.data_dir.mkdir(parents=True, exist_ok=True)
                node.extra_config["controller.quorum.voters"] = voters
                node.prepare(node_ports[node_id], cluster_id)
            for node in self.nodes.values():
                node.launch()
            for node in self.nodes.values():
                node.wait_ready(max(1.0, deadline - time.monotonic()))
            self.wait_for_brokers(len(self.nodes), max(1.0, deadline - time.monotonic()))
        except Exception:
            self.stop()
            raise
        return self.bootstrap

    def stop_node(self, node_id: int, sig: signal.Signals = signal.SIGTERM) -> None:
        """Take one node down, keeping its data: SIGTERM is a controlled shutdown, SIGKILL a crash."""
        self.nodes[node_id].kill(sig)

    def start_node(self, node_id: int, timeout_s: float = 60.0) -> None:
        """Start a stopped node again on its ports and data dir; returns once it answers metadata."""
        node = self.nodes[node_id]
        node.launch()
        node.wait_ready(timeout_s)

    def stop(self, *, remove_data: bool = True) -> None:
        """Stop every node at once (SIGTERM, then SIGKILL) and optionally delete all data."""
        stop_processes([node.state.pid for node in self.nodes.values() if node.running and node.state])
        for node in self.nodes.values():
            node.stop(remove_data=False)  # reaps the JVM
        if remove_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def wait_for_brokers(self, count: int, timeout_s: float = 60.0) -> None:
        """Block until ``count`` brokers are registered (topics with replication 3 need all three)."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            try:
                seen = len(_describe(self.bootstrap, "describe_cluster")["brokers"])
            except Exception as exc:  # a node may still be joining
                log.debug("cluster not described yet: %s", exc)
            if seen >= count:
                return
            time.sleep(0.25)
        raise TimeoutError(f"only {seen} of {count} brokers registered after {timeout_s}s")

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition -> node id of its current leader (-1 while it has none)."""
        described = _describe(self.bootstrap, "describe_topics", [topic])
        return {p["partition"]: p["leader"] for p in described[0]["partitions"]}

    def busiest_leader(self, topics: list[str]) -> int:
        """The node leading the most partitions of ``topics``: the one whose loss hurts most."""
        counts = Counter(leader for t in topics for leader in self.leaders(t).values() if leader >= 0)
        return counts.most_common(1)[0][0]

    def wait_in_sync(self, timeout_s: float = 60.0) -> None:
        """Block until every replica of every partition (internal topics too) is in sync again."""
        deadline = time.monotonic() + timeout_s
        lagging: list[tuple[str, int]] = []
        while time.monotonic() < deadline:
            try:
                described = _describe(self.bootstrap, "describe_topics")
                lagging = [
                    (t["topic"], p["partition"])
                    for t in described
                    for p in t["partitions"]
                    if p["leader"] < 0 or len(p["isr"]) < len(p["replicas"])
                ]
                if not lagging:
                    return
            except Exception as exc:  # a node may be mid-restart
                log.debug("cluster not described yet: %s", exc)
            time.sleep(0.25)
        raise TimeoutError(f"partitions still under-replicated after {timeout_s}s: {lagging[:5]}")

    def rolling_restart(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 60.0) -> None:
        """Restart the nodes one at a time, each only once the cluster is fully in sync again."""
        for node_id in self.nodes:
            self.wait_in_sync(timeout_s)
            self.stop_node(node_id, sig)
            self.start_node(node_id, timeout_s)
        self.wait_in_sync(timeout_s)

    def save_state(self, path: Path) -> None:
        """Write the state file `broker down` reads."""
        states = [asdict(node.state) for node in self.nodes.values() if node.state is not None]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"data_dir": str(self.data_dir), "nodes": states}))


def _distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _describe(bootstrap: str, method: str, *args: Any) -> Any:
    """One admin call from synchronous code (the fixture and the CLI are synchronous)."""
    out: list[Any] = []

    async def call() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        try:
            await asyncio.wait_for(admin.start(), 10)
            out.append(await asyncio.wait_for(getattr(admin, method)(*args), 10))
        finally:
            await admin.close()

    _run_coroutine(call())
    return out[0]


def running_cluster(state_dir: Path) -> str | None:
    """Bootstrap of the cluster `broker up --brokers N` left running in ``state_dir``, if any."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    nodes = [BrokerState(**n) for n in json.loads(path.read_text())["nodes"]]
    if not all(_alive(n.pid) for n in nodes):
        return None
    return ",".join(n.bootstrap for n in nodes)


def cluster_up(settings: LocalBrokerSettings, version: str, size: int) -> str:
    """Start the cluster of `broker up --brokers N` (or find the running one); returns its bootstrap."""
    running = running_cluster(settings.state_dir)
    if running is not None:
        return running
    cluster_down(settings.state_dir)  # a half-dead one from before
    data_dir = settings.state_dir / "cluster"
    shutil.rmtree(data_dir, ignore_errors=True)
    cluster = LocalCluster(
        KafkaDistribution(version, settings.scala_version),
        size=size,
        data_dir=data_dir,
        heap=settings.cluster_heap,
        jvm_opts=settings.jvm_opts,
    )
    bootstrap = cluster.start()
    cluster.save_state(settings.state_dir / STATE_FILE)
    return bootstrap


def cluster_down(state_dir: Path) -> list[int]:
    """Stop the cluster `broker up --brokers N` started and delete its data; returns the pids stopped."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    pids = [BrokerState(**n).pid for n in doc["nodes"]]
    stop_processes(pids)
    shutil.rmtree(doc["data_dir"], ignore_errors=True)
    path.unlink()
    return pids
