"""`make run`'s demo, on the session's broker: every sample answered as the table claims."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from altlas.orchestration.app.settings import load_settings
from altlas.orchestration.devtools.demo import run_demo


async def test_the_demo_answers_every_sample_with_real_models(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    out = io.StringIO()
    code = await run_demo(load_settings(), Console(file=out, width=220, color_system=None))
    table = out.getvalue()
    assert code == 0, table
    assert table.count("✓") == 10 and "✗" not in table, table
    assert "every request from the stream" in table  # Piper's speech, heard by Whisper
    assert "Paris" in table and "error UNKNOWN_MODEL" in table and "error INVALID_PAYLOAD" in table
