"""`altlas send` for people: a file, a folder of files or a sentence in; a readable answer out.

The payload kind is sniffed from its first bytes (orchestration/execution/sniff.py) and
the request says ``task: auto``, so the orchestrator picks the task the way it
does for any producer (orchestration/routing/task_detection.py). Everything goes through
the same Kafka contract another service uses: requests on ``ai.requests.*``,
results read back from ``ai.results.*`` by request id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from altlas.orchestration.app.settings import Modality
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.orchestration.execution.sniff import modality_of
from altlas.pipelines.masks import decode_rle
from altlas.schemas.modalities import RESULT_TYPES
from altlas.schemas.types import (
    AnyRequest,
    AudioClassification,
    Classification,
    Detection,
    Diarization,
    Embedding,
    Ocr,
    ParamValue,
    Result,
    Segmentation,
    Speech,
    TextChunk,
    TextGeneration,
    Transcription,
)

MODALITIES: tuple[Modality, ...] = ("text", "vision", "audio")


@dataclass(frozen=True)
class Outgoing:
    """One request and what it was made from (a file name, or the text itself)."""

    source: str
    modality: Modality
    request: AnyRequest


def outgoing(
    target: str,
    *,
    task: str = "auto",
    model: str = "",
    params: Mapping[str, ParamValue] | None = None,
    modality: Modality | None = None,
) -> list[Outgoing]:
    """The requests ``target`` stands for: every file of a folder, one file, or literal text."""
    path = Path(target)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{target} has no files to send")
    elif path.is_file():
        files = [path]
    else:
        kind = modality or "text"
        return [Outgoing(target, kind, make_request(kind, task, target, model=model, params=params))]
    requests = []
    for file in files:
        data = file.read_bytes()
        kind = modality or _modality(data)
        payload: bytes | str = data
        if kind == "text":
            try:
                payload = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{file} is not an image, audio or UTF-8 text") from None
        requests.append(
            Outgoing(file.name, kind, make_request(kind, task, payload, model=model, params=params))
        )
    return requests


def _modality(data: bytes) -> Modality:
    kind = modality_of(data)
    return "vision" if kind == "vision" else "audio" if kind == "audio" else "text"


async def exchange(
    client: AltlasClient,
    items: list[Outgoing],
    timeout_s: float,
    on_result: Callable[[Result], None] | None = None,
) -> dict[str, Result]:
    """Send every request at once and collect the results as they come (``on_result`` for each)."""
    wanted = {m: {i.request.request_id for i in items if i.modality == m} for m in MODALITIES}
    found: dict[str, Result] = {}
    async with contextlib.AsyncExitStack() as stack:
        readers = {
            m: await stack.enter_async_context(client.reader(client.topics.results(m)))
            for m in MODALITIES
            if wanted[m]
        }
        await client.send_many(i.request for i in items)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        async def gather(modality: Modality) -> None:
            cls = RESULT_TYPES[modality]
            while wanted[modality] - found.keys() and loop.time() < deadline:
                for rec in await readers[modality].read(min(0.5, max(0.01, deadline - loop.time()))):
                    result = client.codec.decode_record(rec.value, cls)
                    if result.request_id in wanted[modality] and result.request_id not in found:
                        found[result.request_id] = result
                        if on_result is not None:
                            on_result(result)

        await asyncio.gather(*(gather(m) for m in readers))
    return found


def gist(result: Result) -> str:
    """The answer of a result in one line, for a person reading a terminal."""
    if result.status.value != "ok":
        error = result.error
        return f"{result.status.value} {error.code}: {error.message}" if error else result.status.value
    output = getattr(result, "output", None)
    if isinstance(output, Classification | AudioClassification):
        top = ", ".join(f"{label.label} ({label.score:.2f})" for label in output.labels[:3])
        if isinstance(output, AudioClassification) and output.segments:
            spans = ", ".join(f"{s.label} {s.start:.1f}-{s.end:.1f} s" for s in output.segments[:4])
            return f"{top}; {spans}"
        return top
    if isinstance(output, Detection):
        if not output.boxes:
            return "nothing found"
        return "; ".join(
            f"{b.class_name} {b.score:.2f} at ({b.x1:.0f}, {b.y1:.0f})-({b.x2:.0f}, {b.y2:.0f})"
            for b in output.boxes[:5]
        ) + (f"; {len(output.boxes) - 5} more" if len(output.boxes) > 5 else "")
    if isinstance(output, Segmentation):
        return _segmentation(output)
    if isinstance(output, Ocr | TextGeneration | TextChunk | Transcription):
        return " ".join(output.text.split())
    if isinstance(output, Embedding):
        head = ", ".join(f"{v:.3f}" for v in output.vector[:4])
        return f"{output.dim}-dimensional vector [{head}, ...]"
    if isinstance(output, Speech):
        return f"{output.duration_s:.1f} s of speech ({output.format}, {output.sample_rate} Hz)"
    if isinstance(output, Diarization):
        turns = ", ".join(f"{t.speaker} {t.start:.1f}-{t.end:.1f} s" for t in output.turns[:6])
        return f"{output.num_speakers} speakers: {turns}"
    return "ok"


def _segmentation(output: Segmentation) -> str:
    area = output.image_width * output.image_height or 1
    parts = [f"{m.class_name}: {decode_rle(m.mask).mean():.1%} of the image" for m in output.class_masks]
    parts += [f"{i.class_name} {i.score:.2f}" for i in output.instances[:5]]
    if output.instances:
        covered = sum(int(decode_rle(i.mask).sum()) for i in output.instances)
        parts.append(f"{len(output.instances)} instances over {covered / area:.1%}")
    return "; ".join(parts) or "nothing found"


def speech_of(result: Result) -> Speech | None:
    """The audio of a speech result, if it is one."""
    output = getattr(result, "output", None)
    return output if isinstance(output, Speech) else None


def save_speech(results: Iterable[tuple[str, Result]], output: Path, *, many: bool) -> list[Path]:
    """Write the audio of speech results: to ``output``, or for many into the folder ``output``."""
    written = []
    for source, result in results:
        speech = speech_of(result)
        if speech is None:
            continue
        target = output
        if many:
            output.mkdir(parents=True, exist_ok=True)
            target = output / f"{Path(source).stem or result.request_id}.{speech.format}"
        target.write_bytes(speech.audio)
        written.append(target)
    return written


def jsonable(result: Result, **extra: Any) -> dict[str, Any]:
    """The raw result as JSON-ready data (bytes, such as audio, as base64)."""
    doc = result.model_dump(mode="python", exclude_none=True)
    plain: dict[str, Any] = json.loads(json.dumps(doc, default=_json_default))
    return {**plain, **extra}


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
