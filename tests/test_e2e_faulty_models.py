"""Models that raise or hang: their requests fail cleanly, circuits open, the rest of the stream goes on."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from altlas.models.runtime import BACKENDS
from altlas.orchestration.clients.client import make_request
from altlas.schemas.types import ModelState, ResultStatus
from tests.builders import white_intolerant_classifier
from tests.conftest import connect, isolated_settings, serving
from tests.images import solid

PARAMS = {"preprocess": {"resize": 4}, "labels_metadata_key": "labels"}


def _registry(tmp: Path, models_dir: Path) -> Path:
    entry = {"task": "vision.classify", "backend": "onnx", "params": PARAMS}
    doc = {
        "models": [
            {
                "id": "picky",
                "path": str(white_intolerant_classifier(tmp / "picky.onnx")),
                **entry,
                "metadata": {"max_batch": 64},
            },
            {"id": "stuck", **entry, "backend": "hanging-onnx", "path": str(models_dir / "mean_color.onnx")},
            {"id": "fine", "path": str(models_dir / "mean_color.onnx"), **entry},
        ]
    }
    path = tmp / "models.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_a_model_raising_on_some_inputs_fails_only_those(
    kafka_bootstrap: str, tmp_path: Path, models_dir: Path
) -> None:
    settings = isolated_settings(
        kafka_bootstrap, _registry(tmp_path, models_dir), modalities=["vision"], cache={"enabled": False}
    )
    async with serving(settings):
        async with connect(settings) as client:
            requests = [
                make_request(
                    "vision",
                    "classify",
                    solid((255, 255, 255) if i % 10 == 3 else (i, 40, 40)),
                    model="picky",
                    request_id=f"p{i}",
                )
                for i in range(30)
            ]
            async with (
                client.reader(settings.topics.results("vision")) as results,
                client.reader(settings.topics.dead_letter) as dlq,
            ):
                await client.send_many(requests)
                answers = await client.collect(results, "vision", [r.request_id for r in requests], 60)
                letters: list = []
                deadline = time.monotonic() + 30
                while len(letters) < 3 and time.monotonic() < deadline:
                    letters += [client.decode_dead_letter(r.value) for r in await dlq.read(0.5)]
    failed = {rid for rid, r in answers.items() if r.status is ResultStatus.ERROR}
    assert failed == {"p3", "p13", "p23"}
    assert all(
        answers[rid].error.code == "MODEL_FAILED" and "Reshape" in answers[rid].error.message
        for rid in failed
    )
    assert {d.request_id for d in letters} == failed
    assert sum(r.status is ResultStatus.OK for r in answers.values()) == 27


def _hanging(
    bootstrap: str, tmp: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> Any:
    """Settings serving the registry above, its ``stuck`` model hanging on every batch."""
    monkeypatch.setitem(BACKENDS, "hanging-onnx", "tests.hanging_model:HangingOnnxRuntime")
    return isolated_settings(
        bootstrap, _registry(tmp, models_dir), modalities=["vision"], cache={"enabled": False}, **overrides
    )


async def test_a_hanging_model_times_out_opens_its_circuit_and_others_keep_answering(
    kafka_bootstrap: str, tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _hanging(
        kafka_bootstrap, tmp_path, models_dir, monkeypatch,
        routing={"attempt_timeout_s": 0.3, "circuit_failures": 2, "circuit_cooldown_s": 60},
    )  # fmt: skip
    async with serving(settings) as run:
        await run.orchestrator.manager.load("stuck")  # loading is not what we are timing
        async with connect(settings) as client:
            async with client.reader(settings.topics.model_status) as statuses:
                stuck = [
                    await client.request(make_request("vision", "classify", solid((9, i, 9)), model="stuck"))
                    for i in range(3)
                ]
                fine = await client.request(
                    make_request("vision", "classify", solid((9, 9, 9)), model="fine")
                )
                states = []
                deadline = time.monotonic() + 10
                while ModelState.CIRCUIT_OPEN not in states and time.monotonic() < deadline:
                    states += [client.decode_status(r.value).state for r in await statuses.read(0.5)]
    assert [r.error.code for r in stuck[:2]] == ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"]
    assert stuck[2].error.code == "MODEL_UNAVAILABLE" and "circuit is open" in stuck[2].error.message
    assert fine is not None and fine.status is ResultStatus.OK
    assert ModelState.CIRCUIT_OPEN in states


async def test_a_leaking_model_is_restarted_and_memory_stays_bounded(
    kafka_bootstrap: str, tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(BACKENDS, "leaky-onnx", "tests.leaky_model:LeakyOnnxRuntime")
    registry = tmp_path / "models.yaml"
    registry.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "id": "leaky",
                        "task": "vision.classify",
                        "backend": "leaky-onnx",
                        "path": str(models_dir / "mean_color.onnx"),
                        "params": PARAMS,
                        "metadata": {"max_batch": 1, "max_growth_mb": 40},
                    }
                ]
            }
        )
    )
    settings = isolated_settings(kafka_bootstrap, registry, modalities=["vision"], cache={"enabled": False})
    async with serving(settings) as run:
        await run.orchestrator.manager.load("leaky")
        process = psutil.Process()
        rss_before = process.memory_info().rss
        batches = 24  # unchecked, 24 x 16 MiB = 384 MiB would stay resident
        async with connect(settings) as client:
            async with client.reader(settings.topics.model_status) as statuses:
                answers = [
                    await client.request(make_request("vision", "classify", solid((i, 9, 9)), model="leaky"))
                    for i in range(batches)
                ]
                rss_after = process.memory_info().rss
                events: list = []
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and sum(e.state is ModelState.FAILED for e in events) < 4:
                    events += [client.decode_status(r.value) for r in await statuses.read(0.5)]
    assert all(a is not None and a.status is ResultStatus.OK for a in answers)  # the leak fails nothing
    failed = [e for e in events if e.model_id == "leaky" and e.state is ModelState.FAILED]
    # 40 MiB allowed at 16 MiB a batch: restarted every third batch.
    assert len(failed) >= 4 and all("leaking memory" in e.message for e in failed), events
    states = [e.state for e in events if e.model_id == "leaky"]
    assert states[states.index(ModelState.FAILED) + 1 :].count(ModelState.READY) >= 3  # reloaded each time
    assert rss_after - rss_before < 128 * 1024 * 1024, (rss_after - rss_before) >> 20


async def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_readyz_fails_while_waiting_records_see_nothing_answered_and_stuck_records_are_counted(
    kafka_bootstrap: str, tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected and assigned is not serving: records waiting with none answered make it unready."""
    settings = _hanging(
        kafka_bootstrap, tmp_path, models_dir, monkeypatch,
        routing={"attempt_timeout_s": 30},
        process={"stall_s": 0.5},
        metrics={"port": 0, "monitor_interval_s": 0.2},
    )  # fmt: skip
    async with serving(settings) as run:
        await run.orchestrator.manager.load("stuck")
        endpoints = run.orchestrator.endpoints
        assert endpoints is not None
        deadline = time.monotonic() + 30
        status, body = await _readyz(endpoints.port)
        while status != 200 and time.monotonic() < deadline:  # the group's first join
            await asyncio.sleep(0.2)
            status, body = await _readyz(endpoints.port)
        assert status == 200 and body["progress"] is True, body
        async with connect(settings) as client:
            answer = asyncio.create_task(
                client.request(make_request("vision", "classify", solid((1, 2, 3)), model="stuck"))
            )
            seen: list[tuple[int, Any]] = []
            stuck_gauge = 0.0
            while not answer.done():
                status, body = await _readyz(endpoints.port)
                seen.append((status, body["progress"]))
                sample = run.orchestrator.metrics.registry.get_sample_value(
                    "altlas_stuck_records", {"modality": "vision"}
                )
                stuck_gauge = max(stuck_gauge, sample or 0.0)
                await asyncio.sleep(0.1)
            assert (await answer) is not None
        assert (503, False) in seen, seen
        assert stuck_gauge >= 1
        status, body = await _readyz(endpoints.port)
        assert status == 200 and body["stalled_s"] == {"vision": 0.0}
