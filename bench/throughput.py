"""altlas vs a raw aiokafka loop: requests/s on a backlog, latency at a steady rate.

Same broker, same model (a small real ONNX classifier), same Avro requests
(4x4 PNG images), same measurement (broker append timestamps of the results).
Each system runs as its own process. Ends with one line:
``RESULT rps=... baseline_rps=... ratio=... p50_ms=... p99_ms=... baseline_p50_ms=... baseline_p99_ms=...``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from bench.common import (
    ROOT,
    broker,
    collect,
    create_topics,
    orchestrator_config,
    preload,
    start_orchestrator,
)

console = Console(stderr=True)


def _requests(n: int, seed: int = 1) -> tuple[list[tuple[bytes, bytes]], dict[str, int]]:
    from altlas.orchestration.clients.client import make_request
    from altlas.schemas.codec import AvroCodec
    from tests.images import solid

    rng = random.Random(seed)
    codec = AvroCodec()
    images = [solid((rng.randrange(256), rng.randrange(256), rng.randrange(256)), size=4) for _ in range(64)]
    out, created = [], {}
    for i in range(n):
        req = make_request(
            "vision",
            "classify",
            images[i % 64],
            model="mean-color",
            request_id=f"r{i}-{uuid.uuid4().hex[:6]}",
        )
        out.append((req.request_id.encode(), codec.encode_record(req)))
        created[req.request_id] = int(req.created_at.timestamp() * 1000)
    return out, created


def _start_altlas(
    bootstrap: str, topic_in: str, topic_out: str, registry: Path, workdir: Path
) -> subprocess.Popen[bytes]:
    config = orchestrator_config(
        "vision", bootstrap, topic_in, topic_out, registry,
        group=f"bench-{uuid.uuid4().hex[:6]}",
        create=True,
        # One decoder process, as for small images in docs/operations.md ("Decoder processes").
        batching={"max_batch": 512, "fetch_max_records": 512, "max_wait_ms": 0, "decode_processes": 1},
        cache={"enabled": False},  # the requests repeat 64 images: the raw loop has no cache either
        metrics={"port": 0},
    )  # fmt: skip
    return start_orchestrator(config, workdir / f"altlas-{topic_in}.yaml")


def _start_raw(bootstrap: str, topic_in: str, topic_out: str, model: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "raw_loop.py"),
            "--bootstrap",
            bootstrap,
            "--input",
            topic_in,
            "--output",
            topic_out,
            "--model",
            str(model),
            "--group",
            f"raw-{uuid.uuid4().hex[:6]}",
        ],
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _backlog(
    system: str, bootstrap: str, n: int, model: Path, registry: Path, workdir: Path
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    topic_in, topic_out = f"bench.{tag}.in", f"bench.{tag}.out"
    await create_topics(bootstrap, {topic_in: 3, topic_out: 3}, log_append_time={topic_out})
    messages, _ = _requests(n)
    await preload(bootstrap, topic_in, messages)
    proc = (
        _start_altlas(bootstrap, topic_in, topic_out, registry, workdir)
        if system == "altlas"
        else _start_raw(bootstrap, topic_in, topic_out, model)
    )
    try:
        got = await collect(bootstrap, topic_out, n, 300, key_of=lambda r: r.key.decode())
    finally:
        _stop(proc)
    return {"rps": got.rps, "results": got.count, "unique": got.unique}


async def _paced(
    system: str, bootstrap: str, rate: int, seconds: int, model: Path, registry: Path, workdir: Path
) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    tag = uuid.uuid4().hex[:6]
    topic_in, topic_out = f"bench.{tag}.in", f"bench.{tag}.out"
    await create_topics(bootstrap, {topic_in: 3, topic_out: 3}, log_append_time={topic_out})
    proc = (
        _start_altlas(bootstrap, topic_in, topic_out, registry, workdir)
        if system == "altlas"
        else _start_raw(bootstrap, topic_in, topic_out, model)
    )
    from altlas.orchestration.clients.client import make_request
    from altlas.schemas.codec import AvroCodec
    from tests.images import solid

    codec = AvroCodec()
    image = solid((10, 200, 30), size=4)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    created: dict[str, int] = {}
    try:
        await asyncio.sleep(5)  # let the system join its group
        warmup = rate * 3  # not measured: model load, first fetches, JIT of the broker
        total = rate * seconds
        start = time.perf_counter()
        for i in range(warmup + total):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            req = make_request("vision", "classify", image, model="mean-color", request_id=f"p{i}-{tag}")
            req = req.model_copy(update={"created_at": datetime.now(UTC)})
            if i >= warmup:
                created[req.request_id] = int(req.created_at.timestamp() * 1000)
            await producer.send(topic_in, codec.encode_record(req), key=req.request_id.encode())
        await producer.flush()
        got = await collect(
            bootstrap,
            topic_out,
            warmup + total,
            120,
            key_of=lambda r: r.key.decode(),
            created_ms=lambda r: created.get(r.key.decode(), -1),
        )
        got.latencies_ms = [
            lat for lat, rec_created in zip(got.latencies_ms, got.created, strict=True) if rec_created >= 0
        ]
    finally:
        await producer.stop()
        _stop(proc)
    return {
        "p50": got.percentile(50),
        "p99": got.percentile(99),
        "paced_unique": got.unique,
        "paced_sent": len(created),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=200, help="requests/s of the latency phase")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1, help="backlog runs per system (median reported)")
    args = parser.parse_args()

    from tests.builders import mean_color_classifier

    with tempfile.TemporaryDirectory() as tmp, broker() as bootstrap:
        workdir = Path(tmp)
        model = mean_color_classifier(workdir / "mean_color.onnx")
        registry = workdir / "models.yaml"
        registry.write_text(
            yaml.safe_dump(
                {
                    "models": [
                        {
                            "id": "mean-color",
                            "task": "vision.classify",
                            "backend": "onnx",
                            "path": str(model),
                            "params": {"preprocess": {"resize": 4}, "labels_metadata_key": "labels"},
                            "metadata": {"max_batch": 512},
                        }
                    ]
                }
            )
        )
        console.print("warming the broker up (not measured) ...")
        await _backlog("raw", bootstrap, min(args.requests, 10_000), model, registry, workdir)
        rows: dict[str, dict[str, Any]] = {}
        for system in ("raw", "altlas"):
            runs = []
            for _ in range(args.runs):
                console.print(f"[bold]{system}[/bold]: backlog of {args.requests} requests ...")
                runs.append(await _backlog(system, bootstrap, args.requests, model, registry, workdir))
            best = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
            console.print(f"[bold]{system}[/bold]: {args.rate} req/s for {args.seconds} s ...")
            best.update(await _paced(system, bootstrap, args.rate, args.seconds, model, registry, workdir))
            rows[system] = best

    table = Table(
        title=f"throughput.py: {args.requests} requests backlog, then {args.rate} req/s (Kafka on loopback)"
    )
    for col in ("system", "requests/s", "results (unique) of N", "p50 ms", "p99 ms"):
        table.add_column(col)
    for system, row in rows.items():
        table.add_row(
            system,
            f"{row['rps']:.0f}",
            f"{row['results']} ({row['unique']}) of {args.requests}",
            f"{row['p50']:.1f}",
            f"{row['p99']:.1f}",
        )
    Console().print(table)
    alt, raw = rows["altlas"], rows["raw"]
    print(
        f"RESULT rps={alt['rps']:.0f} baseline_rps={raw['rps']:.0f} ratio={alt['rps'] / raw['rps']:.2f} "
        f"p50_ms={alt['p50']:.1f} p99_ms={alt['p99']:.1f} baseline_p50_ms={raw['p50']:.1f} "
        f"baseline_p99_ms={raw['p99']:.1f} lost={args.requests - alt['unique']}"
    )


if __name__ == "__main__":
    os.environ.setdefault("ALTLAS_LOG__LEVEL", "WARNING")
    asyncio.run(main())
