"""Orchestrators as real OS processes, for tests that kill, restart and scale them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import build_codec
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import topic_partitions
from altlas.schemas.types import VisionResult


def start_altlas(config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``altlas run --config`` in the background, logging to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "altlas.orchestration", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ALTLAS_LOG__LEVEL": "INFO", **env},
        )


async def wait_started(
    log: Path, timeout_s: float = 60, marker: str = "altlas started", *, times: int = 1
) -> None:
    """Until the log shows ``marker`` (by default: the orchestrator started) ``times`` times."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and log.read_text(errors="replace").count(marker) >= times:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(
        f"orchestrator did not start: {log.read_text(errors='replace')[-2000:] if log.exists() else ''}"
    )


async def stop_altlas(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 60
) -> int | None:
    """Signal and wait; kill if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return await asyncio.to_thread(proc.wait, timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


class ResultCounter:
    """Reads a result topic from the beginning and counts results per request id."""

    def __init__(self, settings: Settings, *, read_committed: bool) -> None:
        self.settings = settings
        self.codec = build_codec(settings)
        self.counts: dict[str, int] = {}
        self._consumer = AIOKafkaConsumer(
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            **client_kwargs(settings.kafka),
        )

    async def __aenter__(self) -> ResultCounter:
        await self._consumer.start()
        topic = self.settings.topics.results("vision")
        tps = [TopicPartition(topic, p) for p in await topic_partitions(self._consumer, topic)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_s: float = 0.3) -> int:
        """Read what arrived; returns the number of distinct ids seen so far."""
        batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000))
        for records in batches.values():
            for rec in records:
                rid = self.codec.decode_record(rec.value, VisionResult).request_id
                self.counts[rid] = self.counts.get(rid, 0) + 1
        return len(self.counts)

    async def wait_for(self, ids: set[str], timeout_s: float) -> set[str]:
        """Poll until every id was seen; returns the missing ones."""
        deadline = time.monotonic() + timeout_s
        while ids - set(self.counts) and time.monotonic() < deadline:
            await self.poll()
        for _ in range(3):  # catch late duplicates
            await self.poll()
        return ids - set(self.counts)
