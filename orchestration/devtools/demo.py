"""`make run`: the whole loop on an embedded default, in one command.

Starts a local Kafka (unless KAFKA_BOOTSTRAP_SERVERS points elsewhere) and an
orchestrator serving the starter registry (orchestration/app/starter.py: real
trained models of every modality; the samples use a document orientation
classifier, Tesseract OCR, the SmolLM2 LLM, a Piper voice and Whisper tiny.en),
sends sample requests the way another service would (the speech to
transcribe is first asked of the Piper voice, a two-step pipeline over the
stream), plus two bad ones to show
error results and dead letters, prints the answers as a table and shuts
everything down. The models come from PyPI wheels and Debian, like a user's
own files would come from their disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import textwrap
import time

from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.table import Table

from altlas.orchestration.app import starter
from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import Orchestrator, build_codec
from altlas.orchestration.app.settings import Modality, Settings, load_settings
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.orchestration.devtools.kafka_dist import KafkaDistribution
from altlas.orchestration.devtools.localkafka import LocalBroker
from altlas.schemas.modalities import request_modality
from altlas.schemas.types import (
    AnyRequest,
    Classification,
    Ocr,
    Result,
    Speech,
    TextGeneration,
    Transcription,
)

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


async def run_demo(base: Settings, console: Console) -> int:
    """Run the demo; returns a process exit code (0 when every answer is as expected)."""
    broker: LocalBroker | None = None
    with console.status("fetching the starter models (first run: ~400 MB from PyPI) and starting Kafka..."):
        registry = starter.registry_file(announce=False)
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
    spoken = "altlas reads every request from the stream"
    speak = make_request("audio", "tts", spoken.encode(), model="joe")
    samples: list[tuple[str, AnyRequest, str]] = []
    results: dict[str, Result] = {}
    try:
        client = AltlasClient(
            client_kwargs(settings.kafka, client_suffix="demo"), build_codec(settings), settings.topics
        )
        async with client:
            # Step one of a pipeline over the stream: the voice's answer is the next request's payload.
            said = await client.request(speak, timeout_s=120)
            speech = b""
            if said is not None:
                results[speak.request_id] = said
                output = getattr(said, "output", None)
                speech = output.audio if isinstance(output, Speech) else b""
            samples = [(f"say: “{spoken}”", speak, "s of speech"), *_samples(spoken, speech)]
            results.update(await _answers(client, settings, [req for _, req, _ in samples[1:]]))
    finally:
        orchestrator.stop()
        await task
    return _print(console, settings, samples, results)


def _samples(spoken: str, speech: bytes) -> list[tuple[str, AnyRequest, str]]:
    """(what it is, the request, what its answer must contain) for the one-step samples."""
    samples: list[tuple[str, AnyRequest, str]] = [
        (f"page turned {deg}°", make_request("vision", "classify", _page(deg), params={"top_k": 2}), str(deg))
        for deg in (0, 90, 180, 270)
    ]
    samples += [
        ("page, read aloud", make_request("vision", "ocr", _page(0)), "inference requests"),
        (
            "a prompt",
            make_request(
                "text", "generate", "The capital of France is", params={"max_tokens": 8, "temperature": 0}
            ),
            "Paris",
        ),
        (
            "the voice's answer, heard",
            make_request("audio", "transcribe", speech),
            " ".join(spoken.split()[2:]),
        ),
        (
            "corrupt JPEG",
            make_request("vision", "classify", b"\xff\xd8\xff\xe0 truncated"),
            "INVALID_PAYLOAD",
        ),
        (
            "unknown model",
            make_request("vision", "classify", _page(0), model="no-such-model"),
            "UNKNOWN_MODEL",
        ),
    ]
    return samples


async def _answers(client: AltlasClient, settings: Settings, requests: list[AnyRequest]) -> dict[str, Result]:
    """Send every request at once (they batch and overlap) and collect the answers per modality."""
    results: dict[str, Result] = {}
    async with contextlib.AsyncExitStack() as stack:
        modalities: tuple[Modality, ...] = ("vision", "text", "audio")
        readers = {
            m: await stack.enter_async_context(client.reader(settings.topics.results(m))) for m in modalities
        }
        await client.send_many(requests)
        for modality, reader in readers.items():
            ids = [req.request_id for req in requests if _modality(req) == modality]
            results.update(await client.collect(reader, modality, ids, timeout_s=120))
    return results


def _print(
    console: Console,
    settings: Settings,
    samples: list[tuple[str, AnyRequest, str]],
    results: dict[str, Result],
) -> int:
    """The answers as a table; returns the exit code (0 when every answer is as expected)."""
    table = Table(
        title="altlas demo: requests in on ai.requests.*, answers out on ai.results.*",
        width=max(console.width, 120),
    )
    for col in ("request", "task", "expected", "answer", "model", "batch", "ms", ""):
        table.add_column(col)
    failures = 0
    for name, req, expected in samples:
        result = results.get(req.request_id)
        if result is None:
            table.add_row(name, str(req.task), expected, "no result", "", "", "", "[red]✗[/red]")
            failures += 1
            continue
        answer = _answer(result)
        ok = expected in answer
        failures += not ok
        mark = "[green]✓[/green]" if ok else "[red]✗[/red]"
        model = f"{result.model_id}@{result.model_version}".strip("@")
        timings = result.timings
        table.add_row(
            name,
            result.task,
            expected,
            answer[:48],
            model,
            str(timings.batch_size),
            f"{timings.total_ms:.0f}",
            mark,
        )
    console.print(table)
    console.print("bad requests were also dead-lettered to", settings.topics.dead_letter)
    return 1 if failures else 0


def _answer(result: Result) -> str:
    """The gist of a result, for one table cell."""
    output = getattr(result, "output", None)
    if isinstance(output, Classification):
        return f"{output.labels[0].label} ({output.labels[0].score:.2f})"
    if isinstance(output, Speech):
        return f"{output.duration_s:.1f} s of speech, {output.format} {output.sample_rate} Hz"
    if isinstance(output, Ocr | TextGeneration | Transcription):
        return " ".join(output.text.split())
    return f"{result.status.value} {result.error.code if result.error else ''}"


def _modality(request: AnyRequest) -> str:
    return request_modality(request)
