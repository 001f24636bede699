"""10,000 hostile messages through the real consumer path: no crash, bounded memory, each accounted for.

Mutations come from a seeded generator (reproducible, and free of Hypothesis'
per-example size limits, which 10,000 messages exceed); ``test_codec_fuzz``
complements it with Hypothesis-driven inputs against the decoder alone.
"""

from __future__ import annotations

import asyncio
import io
import random
import struct
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
import yaml

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import build_codec
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.schemas.codec import AvroCodec
from altlas.schemas.types import AudioResult, DeadLetter, VisionResult
from tests.conftest import isolated_settings, serving
from tests.fixtures_audio import BAND_PARAMS
from tests.images import png_declaring, solid

pytestmark = pytest.mark.chaos
N = 10_000
RESULT_TYPES: dict[str, type[VisionResult] | type[AudioResult]] = {
    "vision": VisionResult,
    "audio": AudioResult,
}


def _seeds() -> list[bytes]:
    """Valid requests of many shapes, the raw material mutations start from."""
    codec = AvroCodec()
    seeds = []
    for i in range(40):
        params = {
            "top_k": i % 5 + 1,
            "x": [str(j) for j in range(i % 7)],
            "f": i / 7,
            "b": bool(i % 2),
            "n": None,
        }
        payload = solid((i * 6, 30, 90)) if i % 4 else png_declaring(50_000, 50_000)
        req = make_request("vision", "classify", payload, model="mean-color" if i % 3 else "", params=params)
        seeds.append(codec.encode_record(req))
    seeds.append(codec.encode_record(make_request("text", "generate", "wrong topic")))
    return seeds


def _varint(n: int) -> bytes:
    zigzag = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        out.append(byte | (0x80 if zigzag else 0))
        if not zigzag:
            return bytes(out)


def hostile(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One hostile message: a mutated seed, garbage, or a crafted bomb."""
    kind = rng.choice(["flip", "truncate", "splice", "random", "huge_length", "deep", "oversized", "valid"])
    seed = rng.choice(seeds)
    if kind == "flip":
        data = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == "truncate":
        return seed[: rng.randrange(len(seed))]
    if kind == "splice":
        other = rng.choice(seeds)
        return seed[: rng.randint(0, len(seed))] + other[rng.randint(0, len(other)) :]
    if kind == "random":
        return rng.randbytes(rng.randint(0, 200))
    if kind == "huge_length":  # a string or bytes length of up to 2^62 right after the header
        return seed[:10] + _varint(rng.randint(2**20, 2**62)) + seed[11:40]
    if kind == "deep":  # a params map declaring millions of entries
        return seed[: 10 + rng.randint(0, 20)] + _varint(rng.randint(10**6, 10**12)) + bytes(8)
    if kind == "oversized":
        return seed + bytes(rng.randint(70_000, 120_000))
    return seed


async def test_10000_hostile_messages_are_each_answered_or_dead_lettered(
    kafka_bootstrap: str, registry_file: Path
) -> None:
    rng = random.Random(20261127)
    seeds = _seeds()
    await _fuzz([hostile(rng, seeds) for _ in range(N)], kafka_bootstrap, registry_file)


def _wav_header_declaring(seconds: float, data: bytes = bytes(64)) -> bytes:
    """A 16 kHz mono PCM WAV whose data chunk claims ``seconds`` but holds only ``data``."""
    declared = min(int(seconds * 32_000), 0xFFFFFFF0)
    fmt = struct.pack("<HHIIHH", 1, 1, 16_000, 32_000, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFF0)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", declared)
        + data
    )


def _audio_seeds() -> list[bytes]:
    """Valid audio requests, and bombs: headers declaring hours, 11 minutes of silence in 31 KB of FLAC."""
    codec = AvroCodec()
    tone = (np.sin(np.arange(8000) * 0.2) * 8000).astype(np.int16)
    wav, flac_bomb = io.BytesIO(), io.BytesIO()
    sf.write(wav, tone, 16_000, format="WAV", subtype="PCM_16")
    sf.write(flac_bomb, np.zeros(660 * 16_000, np.int16), 16_000, format="FLAC")
    payloads = [
        wav.getvalue(),
        flac_bomb.getvalue(),
        _wav_header_declaring(10 * 3600),
        _wav_header_declaring(10 * 3600, wav.getvalue()[44:]),
        b"ID3\x04\x00" + bytes(200),  # an MP3 tag and nothing after it
    ]
    return [
        codec.encode_record(
            make_request("audio", "classify", payload, model="band" if i % 2 else "", params={"top_k": 1})
        )
        for i, payload in enumerate(payloads * 4)
    ]


async def test_2000_hostile_audio_messages_are_each_answered_or_dead_lettered(
    kafka_bootstrap: str, tmp_path: Path, audio_models: Path
) -> None:
    registry = tmp_path / "models.yaml"
    band = {"id": "band", "task": "audio.classify", "backend": "onnx", "params": BAND_PARAMS}
    band["path"] = str(audio_models / "band.onnx")
    registry.write_text(yaml.safe_dump({"models": [band], "defaults": {"audio.classify": "band"}}))
    rng = random.Random(20261128)
    seeds = _audio_seeds()
    outcomes = await _fuzz([hostile(rng, seeds) for _ in range(2000)], kafka_bootstrap, registry, "audio")
    # The bombs were refused as such, and valid audio among the hostile mix was still answered.
    assert outcomes["dead letter:PAYLOAD_TOO_LARGE"] > 0 and outcomes["result:ok"] > 0, outcomes


async def _fuzz(
    messages: list[bytes], bootstrap: str, registry: Path, modality: str = "vision"
) -> Counter[str]:
    """Send, account for every message; returns how many of each outcome (result status, dead-letter code)."""
    settings_ = isolated_settings(
        bootstrap, registry, modalities=[modality], limits={"max_message_bytes": 64_000}
    )
    result_type = RESULT_TYPES[modality]
    process = psutil.Process()
    async with serving(settings_) as run:
        rss_before = process.memory_info().rss
        positions: set[tuple[int, int]] = set()
        outcomes: Counter[str] = Counter()
        codec = build_codec(settings_)
        async with AltlasClient(client_kwargs(settings_.kafka), codec, settings_.topics) as client:
            producer = client._producer
            topic = settings_.topics.requests(modality)
            futures = [await producer.send(topic, m) for m in messages]
            for meta in await asyncio.gather(*futures):
                positions.add((meta.partition, meta.offset))
            accounted: set[tuple[int, int]] = set()
            async with (
                client.reader(settings_.topics.results(modality), from_beginning=True) as results,
                client.reader(settings_.topics.dead_letter, from_beginning=True) as letters,
            ):
                deadline = time.monotonic() + 600
                while positions - accounted and time.monotonic() < deadline:
                    for rec in await results.read(0.2, max_records=5000):
                        headers = dict(rec.headers)
                        result = codec.decode_record(rec.value, result_type)
                        assert isinstance(result, result_type)
                        outcomes[f"result:{result.status.value}"] += 1
                        accounted.add(
                            (int(headers["altlas.source.partition"]), int(headers["altlas.source.offset"]))
                        )
                    for rec in await letters.read(0.2, max_records=5000):
                        letter = codec.decode_record(rec.value, DeadLetter)
                        accounted.add((letter.partition, letter.offset))
                        outcomes[f"dead letter:{letter.error_code}"] += 1
        assert not run.task.done(), "the orchestrator stopped"
        rss_growth = process.memory_info().rss - rss_before
    missing = positions - accounted
    assert not missing, f"{len(missing)} of {len(positions)} messages neither answered nor dead-lettered"
    assert rss_growth < 400 * 2**20, f"memory grew by {rss_growth >> 20} MiB"
    return outcomes
