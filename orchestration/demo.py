"""`make run`: the whole loop on an embedded default, in one command.

Starts a local Kafka (unless KAFKA_BOOTSTRAP_SERVERS points elsewhere) and an
orchestrator serving a real trained classifier, sends sample requests the way
another service would (plus two bad ones, to show error results and dead
letters), prints the results as a table and shuts everything down.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.table import Table

from altlas.orchestration.assets import ORIENTATION_CLASSIFIER, ORIENTATION_PARAMS
from altlas.orchestration.client import AltlasClient, make_request
from altlas.orchestration.kafka_clients import client_kwargs
from altlas.orchestration.kafka_dist import KafkaDistribution
from altlas.orchestration.localkafka import LocalBroker
from altlas.orchestration.service import Orchestrator, build_codec
from altlas.orchestration.settings import Settings, load_settings
from altlas.schemas.types import Classification

_PAGE_TEXT = (
    "altlas consumes inference requests from Kafka, runs the right model in micro-batches "
    "and publishes every result back to the stream, traced end to end. "
) * 10


def _page(clockwise: int) -> bytes:
    page = Image.new("RGB", (600, 800), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=22)
    for i, line in enumerate(textwrap.wrap(_PAGE_TEXT, 45)):
        draw.text((20, 20 + 31 * i), line, fill="black", font=font)
    buf = io.BytesIO()
    page.rotate(-clockwise, expand=True).save(buf, "JPEG" if clockwise % 180 else "PNG")
    return buf.getvalue()


def _registry(directory: Path) -> Path:
    path = directory / "models.yaml"
    doc = {
        "models": [
            {
                "id": "orientation",
                "version": "1",
                "task": "vision.classify",
                "backend": "onnx",
                "path": str(ORIENTATION_CLASSIFIER.path()),
                "params": ORIENTATION_PARAMS,
                "metadata": {"max_batch": 16, "accuracy": 0.92},
            }
        ],
        "defaults": {"vision.classify": "orientation"},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


async def run_demo(base: Settings, console: Console) -> int:
    """Run the demo; returns a process exit code (0 when every answer is as expected)."""
    broker: LocalBroker | None = None
    with tempfile.TemporaryDirectory(prefix="altlas-demo-") as tmp:
        with console.status("fetching the model and starting Kafka..."):
            registry = _registry(Path(tmp))
            bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
            if not bootstrap:
                lb = base.local_broker
                broker = LocalBroker(KafkaDistribution(lb.kafka_version, lb.scala_version), heap=lb.heap)
                await asyncio.to_thread(broker.start)
                bootstrap = broker.bootstrap
        try:
            settings = load_settings(
                kafka={"bootstrap_servers": bootstrap, "group_id": f"altlas-demo-{int(time.time())}"},
                models={"registry": str(registry)},
            )
            return await _exchange(settings, console)
        finally:
            if broker is not None:
                with console.status("stopping Kafka..."):
                    await asyncio.to_thread(broker.stop)


async def _exchange(settings: Settings, console: Console) -> int:
    orchestrator = Orchestrator(settings)
    task = asyncio.create_task(orchestrator.run())
    await asyncio.wait(
        [task, asyncio.create_task(orchestrator.started.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    if task.done():
        task.result()
    console.print(f"[green]orchestrator up[/green] on {settings.kafka.bootstrap_servers}")
    samples: list[tuple[str, bytes, dict[str, Any], str]] = [
        (f"page turned {deg}°", _page(deg), {}, str(deg)) for deg in (0, 90, 180, 270)
    ]
    samples.append(("corrupt JPEG", b"\xff\xd8\xff\xe0 truncated", {}, "error INVALID_PAYLOAD"))
    samples.append(("unknown model", _page(0), {"model": "no-such-model"}, "error UNKNOWN_MODEL"))
    requests = [
        make_request("vision", "classify", data, model=extra.get("model", ""), params={"top_k": 2})
        for _, data, extra, _ in samples
    ]
    kwargs = client_kwargs(settings.kafka, client_suffix="demo")
    try:
        client = AltlasClient(kwargs, build_codec(settings), settings.topics)
        async with client, client.reader(settings.topics.results("vision")) as reader:
            await client.send_many(requests)
            results = await client.collect(reader, "vision", [r.request_id for r in requests], timeout_s=60)
    finally:
        orchestrator.stop()
        await task
    table = Table(title="altlas demo: vision.classify on ai.requests.vision", width=max(console.width, 110))
    for col in ("request", "expected", "answer", "score", "model", "batch", "total ms", ""):
        table.add_column(col)
    failures = 0
    for (name, _, _, expected), req in zip(samples, requests, strict=True):
        result = results.get(req.request_id)
        if result is None:
            table.add_row(name, expected, "no result", "", "", "", "", "[red]✗[/red]")
            failures += 1
            continue
        output = getattr(result, "output", None)
        if isinstance(output, Classification):
            top = output.labels[0]
            answer, score = top.label, f"{top.score:.3f}"
        else:
            answer, score = f"{result.status.value} {result.error.code if result.error else ''}", ""
        ok = answer == expected
        failures += not ok
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        model = f"{result.model_id}@{result.model_version}".strip("@")
        timings = result.timings
        table.add_row(
            name, expected, answer, score, model, str(timings.batch_size), f"{timings.total_ms:.0f}", mark
        )
    console.print(table)
    console.print("bad requests were also dead-lettered to", settings.topics.dead_letter)
    return 1 if failures else 0
