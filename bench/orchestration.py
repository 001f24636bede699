"""What orchestration buys: `performance` routing vs always the slow model, and the result cache.

Two real ONNX models answer identically (the second does extra, discarded
work, so it is slower). Phase 1 sends a backlog with ``strategy: performance``
over both, then the same backlog pinned to the slow model. Phase 2 sends a
backlog where half the requests repeat earlier ones, with the cache on and off.
Same broker, same orchestrator settings, measured from the broker's append
timestamps. Ends with ``RESULT ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from bench.common import broker, collect, create_topics, orchestrator_config, preload, start_orchestrator

console = Console(stderr=True)


def _start(
    bootstrap: str, topic_in: str, topic_out: str, registry: Path, workdir: Path, cache: bool
) -> subprocess.Popen[bytes]:
    config = orchestrator_config(
        "vision", bootstrap, topic_in, topic_out, registry,
        group=f"bench-{uuid.uuid4().hex[:6]}",
        create=False,
        batching={"max_batch": 64, "fetch_max_records": 512, "max_wait_ms": 0},
        cache={"enabled": cache},
        metrics={"port": None},
    )  # fmt: skip
    return start_orchestrator(config, workdir / f"altlas-{topic_in}.yaml")


async def _run(
    bootstrap: str, messages: list[tuple[bytes, bytes]], registry: Path, workdir: Path, *, cache: bool
) -> float:
    tag = uuid.uuid4().hex[:6]
    topic_in, topic_out = f"orch.{tag}.in", f"orch.{tag}.out"
    await create_topics(bootstrap, {topic_in: 3, topic_out: 3}, log_append_time={topic_out})
    await preload(bootstrap, topic_in, messages)
    proc = _start(bootstrap, topic_in, topic_out, registry, workdir, cache)
    try:
        got = await collect(bootstrap, topic_out, len(messages), 600, key_of=lambda r: r.key.decode())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert got.unique == len(messages), f"lost {len(messages) - got.unique}"
    return got.rps


def _requests(
    n: int, params: dict[str, Any], *, repeat_share: float = 0.0, model: str = ""
) -> list[tuple[bytes, bytes]]:
    from altlas.orchestration.clients.client import make_request
    from altlas.schemas.codec import AvroCodec
    from tests.images import solid

    rng = random.Random(3)
    codec = AvroCodec()
    seen: list[bytes] = []
    out = []
    for i in range(n):
        if seen and rng.random() < repeat_share:
            image = rng.choice(seen)
        else:
            image = solid((rng.randrange(256), rng.randrange(256), rng.randrange(256)), size=4)
            seen.append(image)
        req = make_request(
            "vision", "classify", image, model=model, params=params, request_id=f"q{i}-{uuid.uuid4().hex[:6]}"
        )
        out.append((req.request_id.encode(), codec.encode_record(req)))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    from tests.builders import mean_color_classifier, mean_color_variant

    with tempfile.TemporaryDirectory() as tmp, broker() as bootstrap:
        workdir = Path(tmp)
        fast = mean_color_classifier(workdir / "fast.onnx")
        # ~0.7 ms of compute per request (2 cores), against framework overhead of ~0.3 ms: clearly slower.
        slow = mean_color_variant(workdir / "slow.onnx", slow_layers=60, slow_width=1024)
        entry = {
            "task": "vision.classify",
            "backend": "onnx",
            "params": {"preprocess": {"resize": 4}, "labels_metadata_key": "labels"},
        }
        registry = workdir / "models.yaml"
        registry.write_text(
            yaml.safe_dump(
                {
                    "models": [
                        {
                            "id": "fast",
                            "path": str(fast),
                            **entry,
                            "metadata": {"latency_ms": 1.0, "max_batch": 64},
                        },
                        {
                            "id": "slow",
                            "path": str(slow),
                            **entry,
                            "metadata": {"latency_ms": 1.0, "max_batch": 64},
                        },
                    ]
                }
            )
        )
        n = args.requests
        console.print("warming the broker up (not measured) ...")
        await _run(bootstrap, _requests(1000, {}, model="fast"), registry, workdir, cache=False)
        console.print(f"routing: {n} requests, strategy performance over fast+slow ...")
        perf = await _run(
            bootstrap,
            _requests(n, {"strategy": "performance", "models": ["slow", "fast"]}),
            registry,
            workdir,
            cache=False,
        )
        console.print(f"routing: {n} requests, always the slow model ...")
        slow_rps = await _run(bootstrap, _requests(n, {}, model="slow"), registry, workdir, cache=False)
        console.print(f"cache: {n} requests to the slow model, 50% repeats, cache on ...")
        repeats = _requests(n, {}, repeat_share=0.5, model="slow")
        cached = await _run(bootstrap, repeats, registry, workdir, cache=True)
        console.print("... and cache off")
        uncached = await _run(bootstrap, repeats, registry, workdir, cache=False)

    table = Table(title=f"orchestration.py: {n} requests per run, 3 partitions, Kafka on loopback")
    for col in ("run", "requests/s"):
        table.add_column(col)
    for name, value in [
        ("performance routing (fast+slow)", perf),
        ("always slow", slow_rps),
        ("slow, 50% repeats, cache on", cached),
        ("slow, 50% repeats, cache off", uncached),
    ]:
        table.add_row(name, f"{value:.0f}")
    Console().print(table)
    print(
        f"RESULT perf_rps={perf:.0f} slow_rps={slow_rps:.0f} routing_gain={perf / slow_rps:.2f} "
        f"cache_rps={cached:.0f} nocache_rps={uncached:.0f} cache_gain={cached / uncached:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
