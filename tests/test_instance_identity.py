"""Instances side by side: stable transactional ids, and a metrics port each without a fight."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from aiokafka.errors import InvalidReplicationFactorError

from altlas.orchestration.app.identity import (
    UnstableTransactionalIdError,
    hostname_ordinal,
    transactional_id,
    transactional_prefix,
)
from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import Orchestrator
from altlas.orchestration.app.settings import Settings, load_settings
from altlas.orchestration.app.topics import ensure_topics
from altlas.orchestration.observability.probes import HttpEndpoints, json_response
from tests.conftest import isolated_settings, serving


def _eos(**overrides: object) -> Settings:
    return load_settings(delivery="exactly_once", **overrides)


def test_exactly_once_refuses_the_pid_based_default_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = _eos()
    with pytest.raises(UnstableTransactionalIdError, match="allow_unstable_transactional_id"):
        transactional_prefix(settings)
    with pytest.raises(UnstableTransactionalIdError):
        Orchestrator(settings)  # before it connects to anything


def test_exactly_once_starts_on_the_pid_based_id_only_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    settings = _eos(kafka={"allow_unstable_transactional_id": True})
    assert transactional_id(settings, "vision") == f"{settings.instance_id}.vision"


def test_the_transactional_id_comes_from_configuration_that_survives_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert transactional_id(_eos(instance_id="altlas-a"), "text") == "altlas-a.text"
    explicit = _eos(instance_id="altlas-a", kafka={"transactional_id": "eos-7"})
    assert transactional_id(explicit, "audio") == "eos-7.audio"
    ordinal = _eos(instance_ordinal=2, kafka={"group_id": "shop"})
    assert transactional_id(ordinal, "vision") == "shop-2.vision"
    monkeypatch.setenv("ALTLAS_INSTANCE_ORDINAL", "4")
    assert transactional_id(_eos(), "vision") == "altlas-4.vision"


def test_a_statefulset_hostname_gives_the_ordinal_only_inside_kubernetes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert hostname_ordinal("altlas-2") is None  # ip-10-0-0-12 is no ordinal outside Kubernetes
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert hostname_ordinal("altlas-2") == 2
    assert hostname_ordinal("altlas") is None
    monkeypatch.setattr(socket, "gethostname", lambda: "altlas-3")
    settings = _eos()  # instance_id defaults to altlas-3-<pid>: pid-based
    assert transactional_id(settings, "vision") == "altlas-3.vision"


async def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_a_taken_metrics_port_moves_to_the_next_free_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def ok() -> tuple[int, str, bytes]:
            return json_response(200, {"ok": True})

        endpoints = HttpEndpoints("127.0.0.1", port, {"/": ok}, attempts=10)
        got = await endpoints.start()
        try:
            assert got != port
            assert await _get(got, "/") == (200, {"ok": True})
        finally:
            await endpoints.stop()
        only_one = HttpEndpoints("127.0.0.1", port, {"/": ok}, attempts=1)
        fallback = await only_one.start()  # no range left: any free port, never no endpoint
        await only_one.stop()
        assert fallback not in (0, port)


async def test_two_instances_on_one_host_serve_metrics_on_different_ports_and_say_which(
    kafka_bootstrap: str, registry_file: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = isolated_settings(kafka_bootstrap, registry_file, modalities=["vision"], metrics={"port": port})
    second = first.model_copy(update={"instance_id": first.instance_id + "-b"})
    async with serving(first) as a, serving(second) as b:
        assert a.orchestrator.endpoints is not None and b.orchestrator.endpoints is not None
        ports = (a.orchestrator.endpoints.port, b.orchestrator.endpoints.port)
        assert ports[0] == port and ports[1] != port
        for taken in ports:
            _, body = await _get(taken, "/readyz")
            assert body["metrics_port"] == taken


async def test_topics_come_from_the_broker_default_and_a_refused_creation_raises(
    kafka_bootstrap: str,
) -> None:
    settings = isolated_settings(kafka_bootstrap, None)
    kwargs = client_kwargs(settings.kafka)
    name = settings.topics.dead_letter
    assert await ensure_topics(kwargs, {name: {}}, partitions=1, replication_factor=None) == [name]
    with pytest.raises(InvalidReplicationFactorError):  # one broker cannot hold 3 replicas
        await ensure_topics(kwargs, {name + ".rf3": {}}, partitions=1, replication_factor=3)
