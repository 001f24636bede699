"""The orchestrator process: orders the start, run and shutdown of one instance's components.

What an instance is made of is built in ``app.components``; its stream workers
are opened in ``app.streams``; its probes and monitor live beside them.

Start-up order matters: topics exist before anyone produces, the producer is
up before the first status event, and consumers join their groups last.
Shutdown runs the other way: stop fetching, let in-flight batches finish (or
give up after a grace period), commit what was published, unload models,
flush status events, close the producer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaConnectionError
from opentelemetry.sdk.trace import TracerProvider

from altlas.models.manager import ModelManager
from altlas.models.registry import ModelRegistry
from altlas.orchestration.app.components import Components, build_codec, build_components, load_registry
from altlas.orchestration.app.gc_tuning import GcTuning
from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.monitor import Monitor
from altlas.orchestration.app.probes_wiring import Probes
from altlas.orchestration.app.settings import Settings
from altlas.orchestration.app.streams import open_streams
from altlas.orchestration.app.topics import ensure_topics, topic_plan
from altlas.orchestration.execution.lanes import ModelWorkers
from altlas.orchestration.execution.preparation import Decoder
from altlas.orchestration.observability.loop_lag import LoopLag
from altlas.orchestration.observability.metrics import Metrics
from altlas.orchestration.observability.probes import HttpEndpoints
from altlas.orchestration.routing.health import ModelHealth
from altlas.orchestration.serving.loop import StreamWorker
from altlas.producers.publisher import Publisher
from altlas.schemas.codec import AvroCodec, WireFormat
from altlas.schemas.errors import SchemaRegistryUnavailableError

__all__ = ["Orchestrator", "build_codec", "load_registry", "serve"]

log = logging.getLogger(__name__)


class Orchestrator:
    """One altlas instance: builds (or is given) its components and orders start, run and shutdown."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: ModelRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        components: Components | None = None,
    ) -> None:
        self.settings = settings
        if components is None:
            components = build_components(settings, registry=registry, tracer_provider=tracer_provider)
        self.components = components
        self.streams: dict[str, StreamWorker] = {}  # one per modality, opened by start()
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()
        self.exit_code = 0
        self.loop_lag = LoopLag(self.components.metrics.loop_lag.observe)
        self.monitor = Monitor(self.components, self.streams)
        self.probes = Probes(
            self.components, self.streams, self.loop_lag, started=self.started, stopping=self.stop_event
        )

    # The parts tests, benches and embedding code reach for.
    @property
    def registry(self) -> ModelRegistry:
        """The model registry served."""
        return self.components.registry

    @property
    def codec(self) -> AvroCodec:
        """The codec of every record read and written."""
        return self.components.codec

    @property
    def manager(self) -> ModelManager:
        """Loads, shares and evicts the models."""
        return self.components.manager

    @property
    def health(self) -> ModelHealth:
        """Circuits and measured latencies per model."""
        return self.components.health

    @property
    def workers(self) -> ModelWorkers:
        """The model lanes."""
        return self.components.workers

    @property
    def decoder(self) -> Decoder:
        """The payload decode pools."""
        return self.components.decoder

    @property
    def publisher(self) -> Publisher:
        """The shared producer."""
        return self.components.publisher

    @property
    def metrics(self) -> Metrics:
        """The Prometheus metrics of this instance."""
        return self.components.metrics

    @property
    def endpoints(self) -> HttpEndpoints | None:
        """The metrics and health endpoints, when a port is configured and was free."""
        return self.probes.endpoints

    async def start(self) -> None:
        """Create topics, connect clients, join consumer groups."""
        c = self.components
        await _connect(self.settings, c.publisher)
        await asyncio.to_thread(_register_output_schemas, self.settings, c.codec)
        await c.decoder.start()
        c.status.start()
        await c.commands.start()
        self.streams.update(await open_streams(c))
        await self.probes.start()
        self.started.set()
        log.info(
            "altlas started",
            extra={"instance": self.settings.instance_id, "modalities": self.settings.modalities},
        )

    async def run(self) -> None:
        """Start, serve until ``stop()`` (or a signal), then shut down cleanly."""
        await self.start()
        tasks = [
            asyncio.create_task(w.run(self.stop_event), name=f"stream-{m}") for m, w in self.streams.items()
        ]
        tasks.append(asyncio.create_task(self.components.commands.run(self.stop_event), name="commands"))
        tasks.append(asyncio.create_task(self.monitor.run(self.stop_event), name="monitor"))
        tasks.append(asyncio.create_task(self.loop_lag.run(self.stop_event), name="loop lag"))
        stopper = asyncio.create_task(self.stop_event.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    log.error("%s failed", task.get_name(), exc_info=task.exception())
                    self.exit_code = 3
                    self.stop_event.set()
        finally:
            self.stop_event.set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.process.drain_timeout_s
            # The loops stop at once; an exactly-once committer gets half the time to finish its work.
            _, pending = await asyncio.wait(tasks, timeout=self.settings.process.drain_timeout_s / 2)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stopper.cancel()
            await self.shutdown(max(1.0, deadline - loop.time()))

    def stop(self) -> None:
        """Ask the run loop to stop (safe from signal handlers)."""
        self.stop_event.set()

    async def shutdown(self, grace_s: float = 30.0) -> None:
        """Drain, commit, unload and close, in that order, all within ``grace_s``.

        Each step runs even if one before failed, and each gets only the time
        left, so that a broker that does not answer cannot hold a SIGTERM.
        """
        c = self.components
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        drains = [_drain(worker, grace_s * 0.6) for worker in self.streams.values()]
        await asyncio.gather(*drains, return_exceptions=True)  # all modalities at once, not one by one
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        for modality, worker in self.streams.items():
            steps.append((f"stop {modality} consumer", worker.consumer.stop))
        steps += [
            ("stop commands", c.commands.stop),
            ("stop model lanes", c.workers.close),
            ("unload models", c.manager.close),
            ("flush status", c.status.close),
            ("close cache", self._close_cache),
            ("stop producer", c.publisher.stop),
            ("stop transactional producers", self._stop_transactions),
            ("stop endpoints", self.probes.stop),
        ]
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), max(0.5, deadline - loop.time()))
            except TimeoutError:
                log.warning("shutdown step timed out: %s", name)
            except Exception:
                log.exception("shutdown step failed: %s", name)
        c.decoder.shutdown()
        c.tracing.shutdown()
        log.info("altlas stopped", extra={"instance": self.settings.instance_id})

    async def _stop_transactions(self) -> None:
        for worker in self.streams.values():
            if worker.transactions is not None:
                await worker.transactions.stop()

    async def _close_cache(self) -> None:
        if self.components.cache is not None:
            await self.components.cache.close()


async def _connect(settings: Settings, publisher: Publisher) -> None:
    """Create the topics (when asked to) and start the producer; a refusal says what to check."""
    s = settings
    try:
        if s.topics.create:
            await ensure_topics(
                client_kwargs(s.kafka),
                topic_plan(s),
                partitions=s.topics.partitions,
                replication_factor=s.topics.replication_factor,
            )
        await publisher.start()
    except KafkaConnectionError as exc:
        who = f"{s.kafka.security_protocol}"
        if s.kafka.security_protocol.startswith("SASL"):
            who += f", {s.kafka.sasl_mechanism} user {s.kafka.sasl_username}"
        raise ConnectionError(
            f"cannot connect to Kafka at {s.kafka.bootstrap_servers} ({who}): {exc}; check the address, "
            "the security protocol and the credentials (a refused authentication looks like this too)"
        ) from exc


def _register_output_schemas(settings: Settings, codec: AvroCodec) -> None:
    """With Confluent framing, register what we write up front: fail visibly, warm the id cache."""
    ids = codec.schema_ids
    if ids is None or codec.encode_format is not WireFormat.CONFLUENT:
        return
    topics = settings.topics
    outputs = [(f"{m.capitalize()}Result", topics.results(m)) for m in settings.modalities]
    outputs += [("ModelStatus", topics.model_status), ("DeadLetter", topics.dead_letter)]
    for name, topic in outputs:
        try:
            ids.id_for(codec.catalog.get(name), topic)
        except SchemaRegistryUnavailableError as exc:
            log.warning("schema registry unavailable at start (%s); will retry per batch", exc)
            return


async def _drain(worker: StreamWorker, grace_s: float) -> None:
    if not await worker.drain(grace_s):
        log.warning("in-flight batches abandoned at shutdown; they will be redelivered")


async def serve(settings: Settings) -> int:
    """Run one orchestrator until SIGINT or SIGTERM; returns the process exit code."""
    tuning = GcTuning(settings.process)
    tuning.apply()  # before the orchestrator builds anything or loads a model
    orchestrator = Orchestrator(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, orchestrator.stop)
    sweeper = asyncio.create_task(tuning.sweep())
    try:
        await orchestrator.run()
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        tuning.restore()
    return orchestrator.exit_code
