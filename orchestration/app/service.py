"""The orchestrator process: wires settings, Kafka clients, models and pipelines.

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

from altlas.consumers.stream import BatchingConfig, BatchingConsumer
from altlas.models.manager import ModelEvent, ModelManager
from altlas.models.registry import ModelRegistry, ModelSpec, check_pickle_paths
from altlas.orchestration.app.gc_tuning import GcTuning
from altlas.orchestration.app.identity import transactional_prefix
from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.settings import MODALITIES, Settings, cache_dir
from altlas.orchestration.app.topics import ensure_topics, topic_plan
from altlas.orchestration.control.commands import CommandHandler
from altlas.orchestration.control.status_events import StatusReporter
from altlas.orchestration.execution.cache import ResultCache
from altlas.orchestration.execution.lanes import ModelWorkers
from altlas.orchestration.execution.multi_model import MultiModelExecutor
from altlas.orchestration.execution.preparation import Decoder
from altlas.orchestration.observability.loop_lag import LoopLag
from altlas.orchestration.observability.metrics import Metrics
from altlas.orchestration.observability.probes import HttpEndpoints, json_response
from altlas.orchestration.observability.resources import ResourceSampler
from altlas.orchestration.observability.tracing import Tracing, build_provider
from altlas.orchestration.routing.health import ModelHealth
from altlas.orchestration.routing.planning import Planner
from altlas.orchestration.serving.loop import StreamWorker
from altlas.orchestration.serving.processor import ProcessorContext, RequestProcessor
from altlas.pipelines import PipelineLimits, load_pipelines
from altlas.producers.publisher import ProducerConfig, Publisher
from altlas.producers.refusals import Refusals
from altlas.producers.topic_limits import TopicLimits
from altlas.producers.transactions import TransactionalPublisher
from altlas.schemas.catalog import SchemaCatalog
from altlas.schemas.codec import AvroCodec, WireFormat
from altlas.schemas.confluent import SchemaIdMap, SchemaRegistryClient
from altlas.schemas.errors import SchemaRegistryUnavailableError

log = logging.getLogger(__name__)


def build_codec(settings: Settings) -> AvroCodec:
    """The codec for the configured wire format and schema-id source."""
    catalog = SchemaCatalog()
    kafka = settings.kafka
    schema_ids: SchemaRegistryClient | SchemaIdMap | None = None
    if kafka.schema_registry_url:
        schema_ids = SchemaRegistryClient(
            kafka.schema_registry_url, catalog, strategy=kafka.schema_registry_subject_strategy
        )
    elif kafka.schema_ids:
        schema_ids = SchemaIdMap(catalog, kafka.schema_ids)
    return AvroCodec(catalog, encode_format=kafka.wire_format, schema_ids=schema_ids)


def load_registry(settings: Settings) -> ModelRegistry:
    """The configured model registry (an empty one when none is configured)."""
    if settings.models.registry is None:
        log.warning("no model registry configured (models.registry); every request will be UNKNOWN_MODEL")
        return ModelRegistry([])
    registry = ModelRegistry.from_file(settings.models.registry)
    trusted = [settings.models.registry.parent, cache_dir(), *settings.models.trusted_dirs]
    check_pickle_paths(registry, trusted)
    return registry


class Orchestrator:
    """One altlas instance."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: ModelRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else load_registry(settings)
        self.codec = build_codec(settings)
        self.tracing = Tracing(
            tracer_provider if tracer_provider is not None else build_provider(settings.tracing)
        )
        self._kwargs = client_kwargs(settings.kafka)
        # Refuse an unstable exactly-once id before connecting to anything.
        self._txn_prefix = transactional_prefix(settings) if settings.delivery == "exactly_once" else None
        topics = settings.topics
        own = [topics.results(m) for m in MODALITIES] + [topics.dead_letter, topics.model_status]
        self.refusals = Refusals(ttl_s=settings.limits.refusal_ttl_s, exempt=frozenset(own))
        self.publisher = Publisher(
            client_kwargs(settings.kafka, client_suffix="producer"),
            codec=self.codec,
            config=ProducerConfig(
                max_request_size=settings.limits.max_result_bytes,
                send_timeout_s=settings.limits.send_timeout_s,
            ),
            patient_topics=own,
            refusals=self.refusals,
            topic_limits=TopicLimits(client_kwargs(settings.kafka, client_suffix="limits")),
        )
        self.status = StatusReporter(self.publisher, settings.topics.model_status, settings.instance_id)
        self.metrics = Metrics()
        self.loop_lag = LoopLag(self.metrics.loop_lag.observe)
        self.sampler = ResourceSampler()
        self.endpoints: HttpEndpoints | None = None
        if settings.metrics.port is not None:
            self.endpoints = HttpEndpoints(
                settings.metrics.host,
                settings.metrics.port,
                {"/metrics": self._metrics_page, "/healthz": self._healthz, "/readyz": self._readyz},
                attempts=settings.metrics.port_attempts,
            )
        budget = settings.models.memory_budget_mb
        routing = settings.routing
        self.health = ModelHealth(
            failures_to_open=routing.circuit_failures,
            cooldown_s=routing.circuit_cooldown_s,
            alpha=routing.latency_alpha,
            on_circuit=self._circuit_changed,
        )
        self.manager = ModelManager(
            self.registry,
            memory_budget_bytes=budget * 1024 * 1024 if budget else None,
            listener=self._model_event,
            pinned=lambda key: self.workers.pending(key) > 0,
            eviction=settings.models.eviction,
            max_growth_bytes=int(growth * 1024 * 1024) if (growth := settings.models.max_growth_mb) else None,
        )
        batching = settings.batching
        self.workers = ModelWorkers(
            self.manager,
            self.tracing,
            max_batch=batching.max_batch,
            concurrency=batching.model_concurrency,
            health=self.health,
            on_batch=self.metrics.observe_batch,
        )
        self.cache = (
            ResultCache(
                max_bytes=int(settings.cache.max_mb * 1024 * 1024),
                ttl_s=settings.cache.ttl_s,
                redis_url=settings.cache.redis_url,
            )
            if settings.cache.enabled
            else None
        )
        self.decoder = Decoder(
            batching.decode_threads,
            batching.decode_processes,
            process_max_item_bytes=batching.decode_process_max_item_bytes,
            timeout_s=batching.decode_timeout_s,
        )
        lim = settings.limits
        limits = PipelineLimits(
            max_payload_bytes=lim.max_message_bytes,
            max_image_pixels=lim.max_image_pixels,
            max_audio_seconds=lim.max_audio_seconds,
            max_audio_samples=lim.max_audio_samples,
            max_text_chars=lim.max_text_chars,
            max_prompt_tokens=lim.max_prompt_tokens,
        )
        pipelines, unavailable = load_pipelines(limits)
        for task, reason in unavailable.items():
            log.warning("pipeline %s unavailable (%s); install its extra", task, reason)
        self.planner = Planner(
            self.registry,
            pipelines,
            self.health,
            self.manager,
            default_strategies=routing.default_strategy,
            load_penalty_ms=routing.load_penalty_ms,
            max_models=routing.max_models,
        )
        self.planner.manager_demand = self.workers.pending
        self.context = ProcessorContext(
            codec=self.codec,
            planner=self.planner,
            executor=MultiModelExecutor(self.workers, self.decoder, routing.attempt_timeout_s),
            workers=self.workers,
            cache=self.cache,
            topics=settings.topics,
            decoder=self.decoder,
            max_message_bytes=settings.limits.max_message_bytes,
            enqueue=self.publisher.enqueue,
            tracing=self.tracing,
            instance_id=settings.instance_id,
            group_prefix=settings.kafka.group_id,
            observe=self.metrics.observe_outcomes,
            refusals=self.refusals,
        )
        self.streams: dict[str, StreamWorker] = {}
        self.commands = CommandHandler(
            client_kwargs(settings.kafka, client_suffix="commands"),
            settings.topics.model_commands,
            self.codec,
            self.manager,
            self.status,
        )
        self.stop_event = asyncio.Event()
        self.started = asyncio.Event()
        self.exit_code = 0
        self._transactions: list[TransactionalPublisher] = []

    async def start(self) -> None:
        """Create topics, connect clients, join consumer groups."""
        s = self.settings
        try:
            if s.topics.create:
                await ensure_topics(
                    self._kwargs,
                    topic_plan(s),
                    partitions=s.topics.partitions,
                    replication_factor=s.topics.replication_factor,
                )
            await self.publisher.start()
        except KafkaConnectionError as exc:
            who = f"{s.kafka.security_protocol}"
            if s.kafka.security_protocol.startswith("SASL"):
                who += f", {s.kafka.sasl_mechanism} user {s.kafka.sasl_username}"
            raise ConnectionError(
                f"cannot connect to Kafka at {s.kafka.bootstrap_servers} ({who}): {exc}; check the address, "
                "the security protocol and the credentials (a refused authentication looks like this too)"
            ) from exc
        await asyncio.to_thread(self._register_output_schemas)
        await self.decoder.start()
        self.status.start()
        await self.commands.start()
        config = BatchingConfig(
            max_records=s.batching.fetch_max_records,
            max_wait_ms=s.batching.max_wait_ms,
            max_inflight=s.batching.max_inflight,
            max_batch_bytes=s.batching.max_batch_bytes,
            max_inflight_bytes=s.batching.max_inflight_bytes,
        )
        exactly_once = s.delivery == "exactly_once"
        for modality in s.modalities:
            consumer_kwargs: dict[str, object] = {
                "max_partition_fetch_bytes": max(1024 * 1024, s.limits.max_message_bytes),
                "session_timeout_ms": s.kafka.session_timeout_ms,
                "heartbeat_interval_ms": max(100, s.kafka.session_timeout_ms // 3),
            }
            if exactly_once:
                consumer_kwargs["isolation_level"] = "read_committed"
            consumer = BatchingConsumer(
                [s.topics.requests(modality)],
                group_id=f"{s.kafka.group_id}.{modality}",
                client_kwargs=client_kwargs(s.kafka, client_suffix=modality),
                config=config,
                consumer_kwargs=consumer_kwargs,
                transactional=exactly_once,
            )
            transactions = None
            if exactly_once:
                transactions = TransactionalPublisher(
                    client_kwargs(s.kafka, client_suffix=f"txn-{modality}"),
                    f"{self._txn_prefix}.{modality}",
                    max_request_size=s.limits.max_result_bytes,
                    refusals=self.refusals,
                    send_timeout_s=s.limits.send_timeout_s,
                )
                await transactions.start()
                self._transactions.append(transactions)
            await consumer.start()
            self.streams[modality] = StreamWorker(
                consumer,
                RequestProcessor(modality, self.context, budget=consumer),
                self.publisher,
                transactions=transactions,
                max_message_bytes=s.limits.max_result_bytes,
            )
        if self.endpoints is not None:
            try:
                port = await self.endpoints.start()
                log.info("metrics and health on http://%s:%d", s.metrics.host, port)
            except OSError as exc:  # a taken port must not keep the service from serving Kafka
                log.error("metrics endpoint not started on %s:%s: %s", s.metrics.host, s.metrics.port, exc)
                self.endpoints = None
        self.started.set()
        log.info("altlas started", extra={"instance": s.instance_id, "modalities": s.modalities})

    # ------------------------------------------------------------ observability
    def _model_event(self, event: ModelEvent) -> None:
        self.status.on_event(event)
        self.metrics.observe_model(event)

    async def _monitor(self) -> None:
        """Every interval: resources, consumer lag, and a status heartbeat per loaded model."""
        interval = self.settings.metrics.monitor_interval_s
        while not self.stop_event.is_set():
            try:
                await asyncio.wait_for(self.stop_event.wait(), interval)
                return
            except TimeoutError:
                pass
            snapshot = await asyncio.to_thread(self.sampler.sample, self.manager.memory_used)
            self.metrics.observe_resources(snapshot)
            for key in self.manager.loaded():
                self.status.report(self.manager.status(key), {"heartbeat": "true"}, resources=snapshot)
            for modality, worker in self.streams.items():
                for lag in await self._lag(worker):
                    self.metrics.consumer_lag.labels(*lag[:2]).set(lag[2])
                stuck = worker.progress.stuck(self.settings.process.stall_s)
                self.metrics.stuck_records.labels(modality).set(stuck)

    @staticmethod
    async def _lag(worker: StreamWorker) -> list[tuple[str, str, int]]:
        client = worker.consumer.client
        out = []
        for tp in client.assignment():
            high = client.highwater(tp)
            if high is None:
                continue
            try:
                position = await client.position(tp)
            except Exception:
                continue
            out.append((tp.topic, str(tp.partition), max(0, high - position)))
        return out

    async def _metrics_page(self) -> tuple[int, str, bytes]:
        self.metrics.loop_lag_max.set(self.loop_lag.recent_max())
        return 200, "text/plain; version=0.0.4", self.metrics.render()

    async def _healthz(self) -> tuple[int, str, bytes]:
        return json_response(200, {"status": "ok", "instance": self.settings.instance_id})

    async def _readyz(self) -> tuple[int, str, bytes]:
        """Ready when started, the broker answers, every modality owns partitions, and defaults are usable."""
        checks: dict[str, object] = {"started": self.started.is_set() and not self.stop_event.is_set()}
        try:
            await asyncio.wait_for(self.publisher.client.client.fetch_all_metadata(), 3)
            checks["broker"] = True
        except Exception as exc:
            checks["broker"] = f"unreachable: {exc}"
        assigned = {m: len(w.consumer.assignment()) for m, w in self.streams.items()}
        checks["consumers_assigned"] = all(assigned.values()) and bool(assigned)
        # Records waiting with none answered for stall_s: connected and assigned, but not serving.
        stalled = {m: round(w.progress.stalled_s(), 1) for m, w in self.streams.items()}
        checks["progress"] = all(s < self.settings.process.stall_s for s in stalled.values())
        models: dict[str, object] = {}
        for task, ref in self.registry.defaults.items():
            spec = self.registry.get(ref)
            state = self.manager.status(spec.key).state
            usable = (
                state != "failed"
                and not self.health.is_open(spec)
                and (spec.path is None or spec.path.exists())
            )
            models[f"{task}={spec.key}"] = usable or f"not loadable (state {state})"
        checks["default_models"] = all(v is True for v in models.values())
        ready = all(v is True for v in checks.values())
        return json_response(
            200 if ready else 503,
            {
                "ready": ready,
                **checks,
                "partitions": assigned,
                "stalled_s": stalled,
                "models": models,
                "metrics_port": self.endpoints.port if self.endpoints is not None else None,
            },
        )

    async def _stop_endpoints(self) -> None:
        if self.endpoints is not None:
            await self.endpoints.stop()

    def _circuit_changed(self, spec: ModelSpec, opened: bool, why: str) -> None:
        """Circuit transitions are model-status events like loads and evictions."""
        log.warning("circuit %s for %s: %s", "opened" if opened else "closed", spec.key, why)
        self.status.report(
            ModelEvent(spec.id, spec.version, "circuit_open" if opened else "circuit_closed", message=why)
        )

    def _register_output_schemas(self) -> None:
        """With Confluent framing, register what we write up front: fail visibly, warm the id cache."""
        ids = self.codec.schema_ids
        if ids is None or self.codec.encode_format is not WireFormat.CONFLUENT:
            return
        topics = self.settings.topics
        outputs = [(f"{m.capitalize()}Result", topics.results(m)) for m in self.settings.modalities]
        outputs += [("ModelStatus", topics.model_status), ("DeadLetter", topics.dead_letter)]
        for name, topic in outputs:
            try:
                ids.id_for(self.codec.catalog.get(name), topic)
            except SchemaRegistryUnavailableError as exc:
                log.warning("schema registry unavailable at start (%s); will retry per batch", exc)
                return

    async def run(self) -> None:
        """Start, serve until ``stop()`` (or a signal), then shut down cleanly."""
        await self.start()
        tasks = [
            asyncio.create_task(w.run(self.stop_event), name=f"stream-{m}") for m, w in self.streams.items()
        ]
        tasks.append(asyncio.create_task(self.commands.run(self.stop_event), name="commands"))
        tasks.append(asyncio.create_task(self._monitor(), name="monitor"))
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        drains = [self._drain(worker, grace_s * 0.6) for worker in self.streams.values()]
        await asyncio.gather(*drains, return_exceptions=True)  # all modalities at once, not one by one
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        for modality, worker in self.streams.items():
            steps.append((f"stop {modality} consumer", worker.consumer.stop))
        steps += [
            ("stop commands", self.commands.stop),
            ("stop model lanes", self.workers.close),
            ("unload models", self.manager.close),
            ("flush status", self.status.close),
            ("close cache", self._close_cache),
            ("stop producer", self.publisher.stop),
            ("stop transactional producers", self._stop_transactions),
            ("stop endpoints", self._stop_endpoints),
        ]
        for name, step in steps:
            try:
                await asyncio.wait_for(step(), max(0.5, deadline - loop.time()))
            except TimeoutError:
                log.warning("shutdown step timed out: %s", name)
            except Exception:
                log.exception("shutdown step failed: %s", name)
        self.decoder.shutdown()
        self.tracing.shutdown()
        log.info("altlas stopped", extra={"instance": self.settings.instance_id})

    async def _stop_transactions(self) -> None:
        for transactions in self._transactions:
            await transactions.stop()

    async def _close_cache(self) -> None:
        if self.cache is not None:
            await self.cache.close()

    @staticmethod
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
