"""Throughput with 1, 2 and 3 orchestrator processes in one consumer group (6 partitions).

Each process is one Python interpreter: its event loop, Avro decoding and
result encoding are single-threaded, while model inference runs on other
threads. More processes help until the machine's cores are busy; on a 2-core
machine the broker, the benchmark's own reader and every orchestrator share
those two cores, and the table says where that limit is reached.

The backlog is produced only once every process has joined the group and the
group is stable: a backlog waiting before the processes start is half drained
by the first process to join while the others are still loading, which made
the 2- and 3-process figures swing between 1x and 2x from run to run.
Ends with ``RESULT rps_1=... rps_2=... rps_3=... scale_2=... scale_3=... cores=...``.

``--cluster`` runs the same 1, 2 and 3 instances on a local 3-broker cluster and
adds lag over time, the spread over instances and partitions, CPU per request
and what a rebalance costs (``bench/scaling_cluster.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psutil
import yaml
from rich.console import Console
from rich.table import Table

from bench.common import broker, collect, create_topics, orchestrator_config, preload, start_orchestrator

console = Console(stderr=True)


def _requests(n: int) -> list[tuple[bytes, bytes]]:
    from altlas.orchestration.clients.client import make_request
    from altlas.schemas.codec import AvroCodec
    from tests.images import solid

    rng, codec = random.Random(9), AvroCodec()
    out = []
    for i in range(n):
        image = solid((rng.randrange(256), rng.randrange(256), rng.randrange(256)), size=4)
        req = make_request(
            "vision", "classify", image, model="busy", request_id=f"x{i}-{uuid.uuid4().hex[:6]}"
        )
        out.append((req.request_id.encode(), codec.encode_record(req)))
    return out


async def _run(bootstrap: str, n: int, processes: int, registry: Path, workdir: Path) -> tuple[float, float]:
    tag = uuid.uuid4().hex[:6]
    topic_in, topic_out = f"scale.{tag}.in", f"scale.{tag}.out"
    await create_topics(bootstrap, {topic_in: 6, topic_out: 6}, log_append_time={topic_out})
    requests = _requests(n)
    group = f"scale-{tag}"
    procs = []
    for k in range(processes):
        config = orchestrator_config(
            "vision", bootstrap, topic_in, topic_out, registry,
            group=group,
            create=False,
            instance_id=f"{group}-{k}",
            cache={"enabled": False},
            metrics={"port": None},
            batching={"max_batch": 64, "fetch_max_records": 512, "max_wait_ms": 0},
        )  # fmt: skip
        procs.append(start_orchestrator(config, workdir / f"{group}-{k}.yaml"))
    try:
        await _group_stable(bootstrap, f"{group}.vision", processes, 120)
        psutil.cpu_percent(None)
        await preload(bootstrap, topic_in, requests)
        got = await collect(bootstrap, topic_out, n, 600, key_of=lambda r: r.key.decode())
        busy = psutil.cpu_percent(None)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    assert got.unique == n, f"lost {n - got.unique}"
    return got.rps, busy


async def _group_stable(bootstrap: str, group: str, members: int, timeout_s: float) -> None:
    """Until ``group`` is Stable with ``members`` members (every process owns its partitions)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        state: dict[str, Any] = {}
        while asyncio.get_running_loop().time() < deadline:
            try:
                (response,) = await admin.describe_consumer_groups([group])
            except KafkaError:  # no coordinator yet: the offsets topic is still being created
                await asyncio.sleep(0.2)
                continue
            state = response.to_object()["groups"][0]
            if state["state"] == "Stable" and len(state["members"]) == members:
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"group {group} not stable with {members} members: {state.get('state')}")
    finally:
        await admin.close()


def _registry(workdir: Path) -> Path:
    """The ``busy`` model: a few ms of real compute per request, answering like the mean-colour one."""
    from tests.builders import mean_color_variant

    model = mean_color_variant(workdir / "busy.onnx", slow_layers=30, slow_width=512)
    registry = workdir / "models.yaml"
    registry.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "id": "busy",
                        "task": "vision.classify",
                        "backend": "onnx",
                        "path": str(model),
                        "params": {
                            "preprocess": {"resize": 4},
                            "labels_metadata_key": "labels",
                            "intra_op_threads": 1,
                        },
                        "metadata": {"max_batch": 64},
                    }
                ]
            }
        )
    )
    return registry


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--requests", type=int, default=None, help="backlog per run (12,000; 20,000 with --cluster)"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="on a local 3-broker cluster: lag over time, spread, CPU per request, rebalance cost; "
        "writes its section of docs/performance.md",
    )
    parser.add_argument("--no-docs", action="store_true", help="with --cluster: do not rewrite the docs")
    args = parser.parse_args()
    if args.cluster:
        from bench.scaling_cluster import cluster_main

        await cluster_main(args.requests or 20_000, write_docs=not args.no_docs)
        return
    args.requests = args.requests or 12_000
    with tempfile.TemporaryDirectory() as tmp, broker() as bootstrap:
        workdir = Path(tmp)
        registry = _registry(workdir)
        console.print("warming the broker up (not measured) ...")
        await _run(bootstrap, 2000, 1, registry, workdir)
        rows = {}
        for processes in (1, 2, 3):
            console.print(f"{processes} process(es), {args.requests} requests ...")
            rows[processes] = await _run(bootstrap, args.requests, processes, registry, workdir)
    cores = os.cpu_count() or 1
    table = Table(
        title=f"scaling.py: {args.requests} requests, 6 partitions, {cores} cores shared with the broker"
    )
    for col in ("processes", "requests/s", "vs 1 process", "machine CPU %"):
        table.add_column(col)
    for k, (rps, cpu) in rows.items():
        table.add_row(str(k), f"{rps:.0f}", f"{rps / rows[1][0]:.2f}x", f"{cpu:.0f}")
    Console().print(table)
    r1, r2, r3 = (rows[k][0] for k in (1, 2, 3))
    print(
        f"RESULT rps_1={r1:.0f} rps_2={r2:.0f} rps_3={r3:.0f} "
        f"scale_2={r2 / r1:.2f} scale_3={r3 / r1:.2f} cores={cores}"
    )


if __name__ == "__main__":
    asyncio.run(main())
