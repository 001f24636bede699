"""10,000 hostile messages through the real consumer path: no crash, bounded memory, each accounted for.

Mutations come from a seeded generator (reproducible, and free of Hypothesis'
per-example size limits, which 10,000 messages exceed); ``test_codec_fuzz``
complements it with Hypothesis-driven inputs against the decoder alone.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
import zlib
from pathlib import Path

import psutil
import pytest

from altlas.orchestration.client import AltlasClient, make_request
from altlas.orchestration.kafka_clients import client_kwargs
from altlas.orchestration.service import Orchestrator, build_codec
from altlas.schemas.codec import AvroCodec
from altlas.schemas.types import DeadLetter, VisionResult
from tests.conftest import Running, isolated_settings
from tests.images import solid

pytestmark = pytest.mark.chaos
N = 10_000


def _png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(64)))
        + chunk(b"IEND", b"")
    )


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
        payload = solid((i * 6, 30, 90)) if i % 4 else _png_bomb(50_000, 50_000)
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


async def _fuzz(messages: list[bytes], bootstrap: str, registry: Path) -> None:
    settings_ = isolated_settings(
        bootstrap, registry, modalities=["vision"], limits={"max_message_bytes": 64_000}
    )
    process = psutil.Process()
    run = await Running(Orchestrator(settings_)).start()
    rss_before = process.memory_info().rss
    positions: set[tuple[int, int]] = set()
    try:
        codec = build_codec(settings_)
        async with AltlasClient(client_kwargs(settings_.kafka), codec, settings_.topics) as client:
            producer = client._producer
            topic = settings_.topics.requests("vision")
            futures = [await producer.send(topic, m) for m in messages]
            for meta in await asyncio.gather(*futures):
                positions.add((meta.partition, meta.offset))
            accounted: set[tuple[int, int]] = set()
            async with (
                client.reader(settings_.topics.results("vision"), from_beginning=True) as results,
                client.reader(settings_.topics.dead_letter, from_beginning=True) as letters,
            ):
                deadline = time.monotonic() + 600
                while positions - accounted and time.monotonic() < deadline:
                    for rec in await results.read(0.2, max_records=5000):
                        headers = dict(rec.headers)
                        assert isinstance(codec.decode_record(rec.value, VisionResult), VisionResult)
                        accounted.add(
                            (int(headers["altlas.source.partition"]), int(headers["altlas.source.offset"]))
                        )
                    for rec in await letters.read(0.2, max_records=5000):
                        letter = codec.decode_record(rec.value, DeadLetter)
                        accounted.add((letter.partition, letter.offset))
        assert not run.task.done(), "the orchestrator stopped"
        rss_growth = process.memory_info().rss - rss_before
    finally:
        await run.stop()
    missing = positions - accounted
    assert not missing, f"{len(missing)} of {len(positions)} messages neither answered nor dead-lettered"
    assert rss_growth < 400 * 2**20, f"memory grew by {rss_growth >> 20} MiB"
