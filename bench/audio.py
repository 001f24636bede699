"""Speech-to-text clips/s through altlas vs direct faster-whisper calls, same model, same clips.

The model is the trained Whisper tiny.en (CTranslate2, int8, from its wheel);
the clips are espeak-ng sentences (2-4 s, WAV 16 kHz, every payload distinct so
altlas's result cache cannot answer from memory; the cache is off anyway). Direct: one process
decodes each WAV and calls ``WhisperModel.transcribe`` in a loop, the way a
service without altlas would (model already loaded and warmed up). altlas: the
requests are preloaded on a topic once an orchestrator process has answered a
warm-up request (so start-up and model load are not counted); throughput is the
clip count over the time from the first produce to the broker's append time of
the last result. Ends with one line:
``RESULT clips_per_s=... baseline_clips_per_s=... ratio=... batch_mean=...``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from bench.common import broker, collect, create_topics, orchestrator_config, preload, start_orchestrator

console = Console(stderr=True)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Kafka carries the requests to the model.",
    "Please send me the transcript of the meeting.",
    "Sure, it will arrive on the results topic in a moment.",
    "Good morning, the stream is running and the models are loaded.",
    "Thank you, I will wait for the answer.",
]


def _clips(n: int) -> list[bytes]:
    """n distinct clips: a result cache must not answer any of them from memory."""
    from tests.fixtures_audio import espeak, silence, wav_bytes

    voices = ["en-us", "en-us+f3", "en-gb"]
    distinct = [espeak(s, v) for s in SENTENCES for v in voices]
    # i ms of trailing silence makes every payload unique at the same cost to the model
    return [wav_bytes(np.concatenate([distinct[i % len(distinct)], silence(i / 1000)])) for i in range(n)]


def _direct(model_dir: Path, clips: list[bytes], beam_size: int) -> float:
    """Clips/s of a plain loop over WhisperModel.transcribe."""
    import soundfile as sf
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", local_files_only=True)

    def one(data: bytes) -> str:
        audio, _ = sf.read(io.BytesIO(data), dtype="float32")
        segments, _ = model.transcribe(np.asarray(audio), language="en", beam_size=beam_size)
        return " ".join(s.text for s in segments)

    one(clips[0])  # warm-up, not measured
    start = time.perf_counter()
    for data in clips:
        one(data)
    return len(clips) / (time.perf_counter() - start)


def _start_altlas(
    bootstrap: str, topic_in: str, topic_out: str, registry: Path, workdir: Path
) -> subprocess.Popen[bytes]:
    config = orchestrator_config(
        "audio", bootstrap, topic_in, topic_out, registry,
        group=f"bench-{uuid.uuid4().hex[:6]}",
        create=True,
        batching={"max_batch": 8, "fetch_max_records": 32, "max_wait_ms": 20},
        # A backlog of slow clips waits longer than the default 60 s per attempt; no result cache.
        routing={"attempt_timeout_s": 900},
        cache={"enabled": False},
    )  # fmt: skip
    return start_orchestrator(config, workdir / f"altlas-{topic_in}.yaml")


async def _altlas(
    bootstrap: str, clips: list[bytes], registry: Path, workdir: Path, beam_size: int
) -> dict[str, Any]:
    from altlas.orchestration.clients.client import make_request
    from altlas.schemas.codec import AvroCodec
    from altlas.schemas.types import AudioResult

    codec = AvroCodec()
    tag = uuid.uuid4().hex[:6]
    topic_in, topic_out = f"bench.audio.{tag}.in", f"bench.audio.{tag}.out"
    await create_topics(bootstrap, {topic_in: 3, topic_out: 3}, log_append_time={topic_out})
    messages = []
    for i, data in enumerate(clips):
        req = make_request(
            "audio",
            "transcribe",
            data,
            params={"beam_size": beam_size, "language": "en"},
            request_id=f"c{i}-{tag}",
        )
        messages.append((req.request_id.encode(), codec.encode_record(req)))
    warmup = make_request("audio", "transcribe", clips[0], request_id=f"warmup-{tag}")
    batches: list[int] = []
    model_ms: list[float] = []  # each clip's share of its batch's inference time

    def key_of(rec: Any) -> str:
        result = codec.decode_record(rec.value, AudioResult)
        if result.status.value != "ok":
            raise RuntimeError(f"{result.request_id}: {result.error}")
        key = str(rec.key.decode())
        if not key.startswith("warmup"):
            batches.append(result.timings.batch_size)
            model_ms.append(result.timings.inference_ms / max(1, result.timings.batch_size))
        return key

    proc = _start_altlas(bootstrap, topic_in, topic_out, registry, workdir)
    try:
        # One request first, so group join and model load are over before the clock starts.
        await preload(bootstrap, topic_in, [(warmup.request_id.encode(), codec.encode_record(warmup))])
        await collect(bootstrap, topic_out, 1, 300, key_of=key_of)
        started_ms = time.time() * 1000
        await preload(bootstrap, topic_in, messages)
        got = await collect(bootstrap, topic_out, len(clips) + 1, 600, key_of=key_of)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    rps = len(clips) / max(1e-3, (got.last_ms - started_ms) / 1000)
    return {
        "rps": rps,
        "unique": got.unique - 1,
        "model_ms": sum(model_ms) / max(1, len(model_ms)),
        "batch_mean": sum(batches) / max(1, len(batches)),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--beam-size", type=int, default=5)
    args = parser.parse_args()

    from tests.fixtures_audio import WHISPER_TINY_EN

    model_dir = WHISPER_TINY_EN.path().parent
    clips = _clips(args.clips)
    console.print(f"direct: {len(clips)} clips through WhisperModel.transcribe ...")
    before = _direct(model_dir, clips, args.beam_size)
    with tempfile.TemporaryDirectory() as tmp, broker() as bootstrap:
        workdir = Path(tmp)
        registry = workdir / "models.yaml"
        entry = {
            "id": "whisper-tiny-en",
            "task": "audio.transcribe",
            "backend": "faster-whisper",
            "path": str(model_dir),
            "params": {"compute_type": "int8"},
            "metadata": {"max_batch": 8},
        }
        registry.write_text(yaml.safe_dump({"models": [entry]}))
        console.print(f"altlas: backlog of {len(clips)} transcribe requests ...")
        alt = await _altlas(bootstrap, clips, registry, workdir, args.beam_size)
    console.print("direct again (the machine is shared: the baseline is the mean of both runs) ...")
    direct = (before + _direct(model_dir, clips, args.beam_size)) / 2

    table = Table(title=f"audio.py: {len(clips)} espeak clips, Whisper tiny.en int8, beam {args.beam_size}")
    for col in ("system", "clips/s", "answered", "mean batch", "model ms per clip"):
        table.add_column(col)
    table.add_row("direct loop", f"{direct:.2f}", str(len(clips)), "1", f"{1000 / direct:.0f}")
    table.add_row(
        "altlas",
        f"{alt['rps']:.2f}",
        str(alt["unique"]),
        f"{alt['batch_mean']:.1f}",
        f"{alt['model_ms']:.0f}",
    )
    Console().print(table)
    print(
        f"RESULT clips_per_s={alt['rps']:.2f} baseline_clips_per_s={direct:.2f} "
        f"ratio={alt['rps'] / direct:.2f} batch_mean={alt['batch_mean']:.1f} "
        f"lost={len(clips) - alt['unique']}"
    )


if __name__ == "__main__":
    os.environ.setdefault("ALTLAS_LOG__LEVEL", "WARNING")
    asyncio.run(main())
