"""The command line: broker up/down, send, models, config, schemas export."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from altlas.orchestration.app.settings import Settings, load_settings
from tests.conftest import Running, connect, write_config
from tests.images import rotated_page


def _altlas(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "altlas.orchestration", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_broker_up_prints_bootstrap_and_down_stops_it(tmp_path: Path) -> None:
    env = {"ALTLAS_LOCAL_BROKER__STATE_DIR": str(tmp_path / "state")}
    up = _altlas("broker", "up", env=env)
    assert up.returncode == 0, up.stderr
    (line,) = up.stdout.strip().splitlines()
    assert line.startswith("bootstrap=127.0.0.1:")
    bootstrap = line.split("=", 1)[1]
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    try:
        from altlas.orchestration.devtools.localkafka import _alive, wait_until_ready

        wait_until_ready(bootstrap, 10)  # it really answers metadata
        again = _altlas("broker", "up", env=env)  # idempotent: reports the running one
        assert again.stdout.strip() == line
    finally:
        down = _altlas("broker", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert not _alive(state["pid"])
    assert not Path(state["data_dir"]).exists()
    assert not (tmp_path / "state" / "state.json").exists()


async def test_send_json_prints_the_raw_result(settings: Settings, running: Running, tmp_path: Path) -> None:
    image = tmp_path / "page.png"
    image.write_bytes(rotated_page(180))
    config = write_config(settings, tmp_path / "altlas.yaml")
    done = await asyncio.to_thread(
        _altlas, "send", "--config", str(config), "--task", "classify", "-p", "top_k=2", str(image), "--json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "ok" and result["model_id"] == "orientation"
    assert result["output"]["labels"][0]["label"] == "180" and len(result["output"]["labels"]) == 2
    bad = await asyncio.to_thread(
        _altlas,
        "send",
        "--config",
        str(config),
        "--model",
        "nope",
        "--task",
        "classify",
        str(image),
        "--json",
    )
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"]["code"] == "UNKNOWN_MODEL"


async def test_models_load_and_status_talk_to_a_running_instance(
    settings: Settings, running: Running, tmp_path: Path
) -> None:
    config = write_config(settings, tmp_path / "altlas.yaml")
    load = await asyncio.to_thread(
        _altlas, "models", "load", "mean-color@2", "--config", str(config), "--wait", "60"
    )
    assert load.returncode == 0, load.stderr
    assert "ready" in load.stdout and settings.instance_id in load.stdout
    assert running.orchestrator.manager.is_loaded("mean-color@2")
    status = await asyncio.to_thread(
        _altlas, "models", "status", "mean-color@2", "--config", str(config), "--wait", "3"
    )
    assert "ready" in status.stdout
    unload = await asyncio.to_thread(_altlas, "models", "unload", "mean-color@2", "--config", str(config))
    assert "unloaded" in unload.stdout and not running.orchestrator.manager.is_loaded("mean-color@2")
    cancel = await asyncio.to_thread(
        _altlas, "models", "cancel", "mean-color", "no-such-request", "--config", str(config)
    )
    assert cancel.returncode == 0, cancel.stderr
    assert settings.instance_id in cancel.stdout  # answered, and harmless for an id nobody holds


def test_models_list_reads_the_registry(registry_file: Path) -> None:
    listed = _altlas("models", "list", "--registry", str(registry_file))
    assert listed.returncode == 0
    for model in ("orientation", "mean-color", "broken"):
        assert model in listed.stdout


def test_config_reference_lists_every_setting_with_its_variable() -> None:
    ref = _altlas("config").stdout
    for env in (
        "ALTLAS_KAFKA__BOOTSTRAP_SERVERS",
        "ALTLAS_BATCHING__MAX_WAIT_MS",
        "ALTLAS_MODELS__REGISTRY",
        "ALTLAS_LOCAL_BROKER__KAFKA_VERSION",
        "ALTLAS_TRACING__EXPORTER",
    ):
        assert env in ref


def test_schemas_export_writes_standalone_schemas(tmp_path: Path) -> None:
    done = _altlas("schemas", "export", str(tmp_path))
    assert done.returncode == 0, done.stderr
    import fastavro

    files = sorted(p.name for p in tmp_path.glob("*.avsc"))
    assert "altlas.events.VisionRequest.avsc" in files and len(files) == 9
    for path in tmp_path.glob("*.avsc"):
        fastavro.parse_schema(json.loads(path.read_text()), named_schemas={})


def test_settings_precedence_is_flags_then_env_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "kafka: {bootstrap_servers: 'file:1', client_id: from-file}\nbatching: {max_batch: 7}\n"
    )
    monkeypatch.setenv("ALTLAS_KAFKA__CLIENT_ID", "from-env")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    s = load_settings(config)
    assert (s.kafka.bootstrap_servers, s.kafka.client_id, s.batching.max_batch) == ("file:1", "from-env", 7)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "plain-env:9")
    assert load_settings(config).kafka.bootstrap_servers == "plain-env:9"
    flagged = load_settings(config, kafka={"bootstrap_servers": "flag:2"})
    assert flagged.kafka.bootstrap_servers == "flag:2" and flagged.kafka.client_id == "from-env"
    monkeypatch.delenv("ALTLAS_CONFIG")


async def test_status_shows_lag_models_and_recent_errors(
    settings: Settings, running: Running, tmp_path: Path
) -> None:
    from altlas.orchestration.clients.client import make_request
    from tests.images import solid

    async with connect(settings) as client:
        assert (
            await client.request(make_request("vision", "classify", solid((5, 5, 5)), model="mean-color"))
            is not None
        )
        bad = make_request("vision", "classify", b"\x89PNG broken", model="mean-color", request_id="broken-1")
        assert (await client.request(bad)).status.value == "error"
    config = write_config(settings, tmp_path / "altlas.yaml")
    shown = await asyncio.to_thread(_altlas, "status", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"{settings.kafka.group_id}.vision" in text and settings.topics.requests("vision") in text
    assert "mean-color" in text and "ready" in text and settings.instance_id in text
    assert "INVALID_PAYLOAD" in text and "broken-1" in text
