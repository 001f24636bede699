"""Every hostile request fails alone, in the middle of ordinary traffic, against `altlas run` as a process.

Per case: ordinary requests, the hostile record, more ordinary requests. The
case passes when the hostile record gets its error result and/or dead letter,
the group's committed offset passes it within 10 s, the event loop was never
held for more than 250 ms, and the service's RSS stays under its bound. At the
end every ordinary request must have been answered, and SIGTERM with work in
flight must finish within the drain timeout. A table of the figures is printed
(and kept in docs/operations.md, "Hostile input").
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import build_codec
from altlas.orchestration.app.settings import MODALITIES, Settings
from altlas.orchestration.clients.client import make_request
from altlas.schemas.types import AudioResult, DeadLetter, ResultStatus, TextResult, VisionResult
from tests.conftest import create_topics, isolated_settings, registry_doc, write_config
from tests.fixtures_audio import BAND_PARAMS
from tests.hostile_cases import Case, hostile_cases
from tests.images import solid
from tests.processes import start_altlas, wait_started

pytestmark = pytest.mark.chaos

ORDINARY_AROUND_EACH = 40  # before and after each case: with ~30 cases, well over 2,000 in all
COMMIT_WITHIN_S = 10.0
LOOP_BLOCK_LIMIT_S = 0.25
RSS_BOUND = 512 * 2**20  # the service with its vision, text and audio models loaded
DRAIN_TIMEOUT_S = 10.0
RESULTS = {"vision": VisionResult, "text": TextResult, "audio": AudioResult}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hostile_settings(
    kafka_bootstrap: str,
    tmp_path: Path,
    models_dir: Path,
    orientation_model: Path,
    tiny_gguf: Path,
    audio_models: Path,
) -> Settings:
    doc = registry_doc(models_dir, orientation_model)
    doc["models"] += [
        {"id": "tiny", "tasks": ["text.generate"], "backend": "llama.cpp", "path": str(tiny_gguf)},
        {
            "id": "band",
            "task": "audio.classify",
            "backend": "onnx",
            "path": str(audio_models / "band.onnx"),
            "params": BAND_PARAMS,
        },
    ]
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump(doc))
    return isolated_settings(
        kafka_bootstrap,
        registry,
        metrics={"port": _free_port(), "monitor_interval_s": 1.0},
        limits={"max_message_bytes": 512 * 1024, "send_timeout_s": 10.0},  # the broker takes 1 MiB
        process={"drain_timeout_s": DRAIN_TIMEOUT_S},
        cache={"enabled": False},
    )


class Watch:
    """Reads results and dead letters of every modality, and the service's metrics."""

    def __init__(self, settings: Settings, pid: int) -> None:
        self.settings = settings
        self.codec = build_codec(settings)
        self.process = psutil.Process(pid)
        self.results: dict[str, Any] = {}
        self.letters: dict[tuple[str, int, int], DeadLetter] = {}
        topics = [settings.topics.results(m) for m in MODALITIES] + [settings.topics.dead_letter]
        self._types = {settings.topics.results(m): RESULTS[m] for m in MODALITIES}
        self.consumer = AIOKafkaConsumer(
            *topics, group_id=None, auto_offset_reset="earliest", **client_kwargs(settings.kafka)
        )
        self.admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
        self.rss_max = 0
        self.loop_max = 0.0

    async def poll(self) -> None:
        for tp, records in (await self.consumer.getmany(timeout_ms=100)).items():
            for rec in records:
                if tp.topic == self.settings.topics.dead_letter:
                    letter = self.codec.decode_record(rec.value, DeadLetter)
                    self.letters[(letter.topic, letter.partition, letter.offset)] = letter
                else:
                    result = self.codec.decode_record(rec.value, self._types[tp.topic])
                    self.results.setdefault(result.request_id, result)
        self.rss_max = max(self.rss_max, self.process.memory_info().rss)

    async def scrape_loop_lag(self) -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.settings.metrics.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        page = (await reader.read()).decode()
        writer.close()
        match = re.search(r"^altlas_event_loop_lag_max_seconds (\S+)$", page, re.M)
        value = float(match.group(1)) if match else 0.0
        self.loop_max = max(self.loop_max, value)
        return value

    async def committed(self, modality: str) -> dict[int, int]:
        offsets = await self.admin.list_consumer_group_offsets(f"{self.settings.kafka.group_id}.{modality}")
        topic = self.settings.topics.requests(modality)  # type: ignore[arg-type]
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


async def _small_topic(settings: Settings) -> str:
    name = f"ai.results.small-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**client_kwargs(settings.kafka))
    await admin.start()
    try:
        config = {"max.message.bytes": "1500"}
        await admin.create_topics(
            [NewTopic(name, num_partitions=1, replication_factor=1, topic_configs=config)]
        )
    finally:
        await admin.close()
    return name


def _answered(case: Case, watch: Watch, topic: str, partition: int, offset: int) -> bool:
    if case.dead_letter and (topic, partition, offset) not in watch.letters:
        return False
    return case.request_id is None or case.request_id in watch.results


async def _run_case(
    case: Case, watch: Watch, producer: AIOKafkaProducer, ordinary: list[Any], settings: Settings
) -> dict[str, Any]:
    codec = watch.codec
    vision = settings.topics.requests("vision")
    for req in ordinary[:ORDINARY_AROUND_EACH]:
        await producer.send(vision, codec.encode_record(req, topic=vision), key=req.request_id.encode())
    topic = settings.topics.requests(case.modality)
    started = time.monotonic()
    meta = await (await producer.send(topic, case.value, key=case.name.encode()))
    for req in ordinary[ORDINARY_AROUND_EACH:]:
        await producer.send(vision, codec.encode_record(req, topic=vision), key=req.request_id.encode())
    answered_s = passed_s = None
    loop_max = 0.0
    while time.monotonic() - started < 60 and passed_s is None:
        await watch.poll()
        if answered_s is None and _answered(case, watch, topic, meta.partition, meta.offset):
            answered_s = time.monotonic() - started
        if (
            answered_s is not None
            and (await watch.committed(case.modality)).get(meta.partition, -1) > meta.offset
        ):
            passed_s = time.monotonic() - started
        loop_max = max(loop_max, await watch.scrape_loop_lag())
    result = watch.results.get(case.request_id or "")
    letter = watch.letters.get((topic, meta.partition, meta.offset))
    got = "OK" if result is not None and result.status is ResultStatus.OK else None
    if result is not None and result.error is not None:
        got = result.error.code
    return {
        "case": case.name,
        "modality": case.modality,
        "answer": got or "-",
        "dead_letter": letter.error_code if letter is not None else "-",
        "original_kept": letter is None or letter.value == case.value or case.name == "oversized-record",
        "answered_s": answered_s,
        "committed_past_s": passed_s,
        "loop_max_ms": loop_max * 1000,
        "rss_mib": watch.process.memory_info().rss / 2**20,
    }


async def test_each_hostile_request_fails_alone_in_ordinary_traffic(
    hostile_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = hostile_settings
    await create_topics(settings)
    small = await _small_topic(settings)
    config = write_config(settings, tmp_path / "altlas.yaml")
    log = tmp_path / "altlas.log"
    proc = start_altlas(config, log)
    rows: list[dict[str, Any]] = []
    ordinary_ids: set[str] = set()
    producer = AIOKafkaProducer(max_request_size=8 * 2**20, **client_kwargs(settings.kafka))
    await producer.start()
    watch = Watch(settings, proc.pid)
    try:
        await wait_started(log, 120)
        await watch.consumer.start()
        await watch.admin.start()
        cases = hostile_cases(settings, watch.codec, small)
        assert len(cases) >= 25
        for n, case in enumerate(cases):
            ordinary = [
                make_request(
                    "vision", "classify", solid((n, i, 7)), model="mean-color", request_id=f"ok-{n}-{i}"
                )
                for i in range(2 * ORDINARY_AROUND_EACH)
            ]
            ordinary_ids |= {r.request_id for r in ordinary}
            rows.append(await _run_case(case, watch, producer, ordinary, settings))
        deadline = time.monotonic() + 60
        while ordinary_ids - set(watch.results) and time.monotonic() < deadline:
            await watch.poll()
        # SIGTERM with work in flight: a backlog of ordinary requests and generations.
        vision, text = settings.topics.requests("vision"), settings.topics.requests("text")
        for i in range(500):
            req = make_request("vision", "classify", solid((i % 200, 1, 1)), model="mean-color")
            await producer.send(vision, watch.codec.encode_record(req, topic=vision))
        for i in range(8):
            req = make_request("text", "generate", f"story {i}", model="tiny", params={"max_tokens": 4000})
            await producer.send(text, watch.codec.encode_record(req, topic=text))
        await producer.flush()
        await asyncio.sleep(1.0)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(proc.wait, 60)
        sigterm_s = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
        await producer.stop()
        await watch.consumer.stop()
        await watch.admin.close()

    table = _table(rows, len(ordinary_ids), sigterm_s, watch)
    with capsys.disabled():
        print("\n" + table)
    out = os.environ.get("ALTLAS_HOSTILE_TABLE")
    if out:
        Path(out).write_text(table + "\n")
    missing = ordinary_ids - set(watch.results)
    assert not missing, f"{len(missing)} ordinary requests unanswered"
    assert all(watch.results[i].status is ResultStatus.OK for i in ordinary_ids)
    for case, row in zip(cases, rows, strict=True):
        assert row["answered_s"] is not None, f"{case.name}: no answer ({row})"
        if case.code is not None:
            assert row["answer"] == case.code, f"{case.name}: {row}"
        assert row["committed_past_s"] is not None and row["committed_past_s"] <= COMMIT_WITHIN_S, row
        assert row["original_kept"], row
        assert row["loop_max_ms"] <= LOOP_BLOCK_LIMIT_S * 1000, row
    assert watch.rss_max < RSS_BOUND, f"RSS reached {watch.rss_max / 2**20:.0f} MiB"
    assert exit_code == 0, log.read_text()[-3000:]
    assert sigterm_s <= DRAIN_TIMEOUT_S + 5, f"SIGTERM took {sigterm_s:.1f}s"  # + interpreter exit


def _table(rows: list[dict[str, Any]], ordinary: int, sigterm_s: float, watch: Watch) -> str:
    def s(value: float | None) -> str:
        return "never" if value is None else f"{value:.2f}"

    lines = [
        "| case | topic | answer | dead letter | answered (s) | committed past (s) | loop max ms | RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['modality']} | {r['answer']} | {r['dead_letter']} | {s(r['answered_s'])} "
            f"| {s(r['committed_past_s'])} | {r['loop_max_ms']:.0f} | {r['rss_mib']:.0f} |"
        )
    lines.append(
        f"\n{len(rows)} cases among {ordinary} ordinary requests (all answered: "
        f"{len(set(watch.results) & {k for k in watch.results if k.startswith('ok-')})}); "
        f"RSS max {watch.rss_max / 2**20:.0f} MiB; event loop worst {watch.loop_max * 1000:.0f} ms; "
        f"SIGTERM with work in flight: {sigterm_s:.1f} s (drain timeout {DRAIN_TIMEOUT_S:.0f} s)"
    )
    return "\n".join(lines)
