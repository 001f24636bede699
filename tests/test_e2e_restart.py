"""SIGTERM mid-stream, start again: every request is answered, none lost."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.schemas.types import ResultStatus
from tests.conftest import create_topics, write_config
from tests.images import rotated_page
from tests.processes import start_altlas, wait_started


async def test_sigterm_mid_stream_then_restart_loses_nothing(
    settings: Settings, client: AltlasClient, tmp_path: Path
) -> None:
    await create_topics(settings)
    config = write_config(settings, tmp_path / "altlas.yaml")
    log = tmp_path / "altlas.log"
    pages = [rotated_page(d, fmt="JPEG") for d in (0, 90, 180, 270)]
    requests = [
        make_request("vision", "classify", pages[i % 4], request_id=f"r{i}", params={"top_k": 1})
        for i in range(1500)
    ]
    ids = {r.request_id for r in requests}
    seen: dict[str, int] = {}
    async with client.reader(client.topics.results("vision")) as reader:
        await client.send_many(requests)
        first = start_altlas(config, log)
        try:
            deadline = time.monotonic() + 90
            while len(seen) < 100 and time.monotonic() < deadline:
                for rec in await reader.read(0.1, max_records=10):
                    rid = client.codec.decode_record(rec.value, _vision_result()).request_id
                    seen[rid] = seen.get(rid, 0) + 1
            assert 0 < len(seen) < len(ids), f"wanted to stop mid-stream, had {len(seen)} results"
            first.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(first.wait, 60) == 0, log.read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.kill()
        stopped_at = len(seen)
        second = start_altlas(config, log)
        try:
            # Started for sure, even when the first run's drain answered everything in flight.
            await wait_started(log, 120, times=2)
            deadline = time.monotonic() + 120
            while ids - set(seen) and time.monotonic() < deadline:
                for rec in await reader.read(0.5):
                    result = client.codec.decode_record(rec.value, _vision_result())
                    assert result.status is ResultStatus.OK
                    seen[result.request_id] = seen.get(result.request_id, 0) + 1
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.to_thread(second.wait, 60)
    assert ids - set(seen) == set(), f"lost {len(ids - set(seen))} requests"
    assert stopped_at < len(ids)
    assert "altlas stopped" in log.read_text()
    # Both runs drained the backlog under the garbage-collector tuning of orchestration/app/gc_tuning.py.
    assert log.read_text().count("objects frozen") == 2


def _vision_result():  # type: ignore[no-untyped-def]
    from altlas.schemas.types import VisionResult

    return VisionResult
