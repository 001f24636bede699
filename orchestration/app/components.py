"""What one altlas instance is made of, built from settings without connecting to anything.

``build_components`` is the one place that wires the object graph: the codec,
the registry and the model manager, the lanes and the planner, the processors'
shared context, the publisher and the status reporter, metrics and tracing. The
Orchestrator orders their start and shutdown; a replay builds the same parts to
answer old requests without serving a topic. Stream workers are not here: their
Kafka consumers need a running event loop and joined groups, so ``app.streams``
opens them when the instance starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.sdk.trace import TracerProvider

from altlas.models.manager import ModelEvent, ModelManager
from altlas.models.registry import ModelRegistry, ModelSpec, check_pickle_paths
from altlas.orchestration.app.identity import transactional_prefix
from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.settings import MODALITIES, Settings, cache_dir
from altlas.orchestration.control.commands import CommandHandler
from altlas.orchestration.control.status_events import StatusReporter
from altlas.orchestration.execution.cache import ResultCache
from altlas.orchestration.execution.lanes import Demand, ModelWorkers
from altlas.orchestration.execution.multi_model import MultiModelExecutor
from altlas.orchestration.execution.preparation import Decoder
from altlas.orchestration.observability.metrics import Metrics
from altlas.orchestration.observability.tracing import Tracing, build_provider
from altlas.orchestration.routing.health import ModelHealth
from altlas.orchestration.routing.planning import Planner
from altlas.orchestration.serving.processor import ProcessorContext
from altlas.pipelines import PipelineLimits, load_pipelines
from altlas.pipelines.base import Pipeline
from altlas.producers.publisher import ProducerConfig, Publisher
from altlas.producers.refusals import Refusals
from altlas.producers.topic_limits import TopicLimits
from altlas.schemas.catalog import SchemaCatalog
from altlas.schemas.codec import AvroCodec
from altlas.schemas.confluent import SchemaIdMap, SchemaRegistryClient

log = logging.getLogger(__name__)

_MB = 1024 * 1024


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


@dataclass(frozen=True)
class Components:
    """The parts of one instance; none of them is connected or started yet."""

    settings: Settings
    registry: ModelRegistry
    codec: AvroCodec
    tracing: Tracing
    refusals: Refusals  # what the broker refused, shared by the publishers and the reply policy
    publisher: Publisher
    status: StatusReporter
    metrics: Metrics
    health: ModelHealth
    manager: ModelManager
    workers: ModelWorkers
    cache: ResultCache | None
    decoder: Decoder
    planner: Planner
    context: ProcessorContext  # what the processors of every modality share
    commands: CommandHandler
    transactional_prefix: str | None  # set for exactly-once delivery only


def build_components(
    settings: Settings,
    *,
    registry: ModelRegistry | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Components:
    """Build every part of one instance from ``settings``.

    Raises before anything connects when exactly-once delivery would run on an
    unstable transactional id.
    """
    registry = registry if registry is not None else load_registry(settings)
    codec = build_codec(settings)
    tracing = Tracing(tracer_provider if tracer_provider is not None else build_provider(settings.tracing))
    txn_prefix = transactional_prefix(settings) if settings.delivery == "exactly_once" else None
    topics = settings.topics
    own = [topics.results(m) for m in MODALITIES] + [topics.dead_letter, topics.model_status]
    refusals = Refusals(ttl_s=settings.limits.refusal_ttl_s, exempt=frozenset(own))
    publisher = _publisher(settings, codec, refusals, own)
    status = StatusReporter(publisher, topics.model_status, settings.instance_id)
    metrics = Metrics()
    routing = settings.routing
    health = ModelHealth(
        failures_to_open=routing.circuit_failures,
        cooldown_s=routing.circuit_cooldown_s,
        alpha=routing.latency_alpha,
        on_circuit=_circuit_reporter(status),
    )
    demand = Demand()
    manager = _manager(settings, registry, demand, _model_listener(status, metrics))
    workers = ModelWorkers(
        manager,
        tracing,
        max_batch=settings.batching.max_batch,
        concurrency=settings.batching.model_concurrency,
        health=health,
        on_batch=metrics.observe_batch,
        demand=demand,
    )
    planner = Planner(
        registry,
        _pipelines(settings),
        health,
        manager,
        default_strategies=routing.default_strategy,
        load_penalty_ms=routing.load_penalty_ms,
        max_models=routing.max_models,
        demand=demand.pending,
    )
    cache = _cache(settings)
    decoder = _decoder(settings)
    context = ProcessorContext(
        codec=codec,
        planner=planner,
        executor=MultiModelExecutor(workers, decoder, routing.attempt_timeout_s),
        workers=workers,
        cache=cache,
        topics=topics,
        decoder=decoder,
        max_message_bytes=settings.limits.max_message_bytes,
        enqueue=publisher.enqueue,
        tracing=tracing,
        instance_id=settings.instance_id,
        group_prefix=settings.kafka.group_id,
        observe=metrics.observe_outcomes,
        refusals=refusals,
    )
    commands = CommandHandler(
        client_kwargs(settings.kafka, client_suffix="commands"),
        topics.model_commands,
        codec,
        manager,
        status,
        in_flight=workers.in_flight,
    )
    return Components(
        settings=settings,
        registry=registry,
        codec=codec,
        tracing=tracing,
        refusals=refusals,
        publisher=publisher,
        status=status,
        metrics=metrics,
        health=health,
        manager=manager,
        workers=workers,
        cache=cache,
        decoder=decoder,
        planner=planner,
        context=context,
        commands=commands,
        transactional_prefix=txn_prefix,
    )


def _publisher(settings: Settings, codec: AvroCodec, refusals: Refusals, own: list[str]) -> Publisher:
    """The shared producer; our own topics are ``patient`` (waited for, never refused for good)."""
    return Publisher(
        client_kwargs(settings.kafka, client_suffix="producer"),
        codec=codec,
        config=ProducerConfig(
            max_request_size=settings.limits.max_result_bytes,
            send_timeout_s=settings.limits.send_timeout_s,
        ),
        patient_topics=own,
        refusals=refusals,
        topic_limits=TopicLimits(client_kwargs(settings.kafka, client_suffix="limits")),
    )


def _manager(
    settings: Settings,
    registry: ModelRegistry,
    demand: Demand,
    listener: Callable[[ModelEvent], None],
) -> ModelManager:
    """The model manager; a model with requests waiting for it (``demand``) is never evicted."""
    models = settings.models
    return ModelManager(
        registry,
        memory_budget_bytes=models.memory_budget_mb * _MB if models.memory_budget_mb else None,
        listener=listener,
        pinned=demand.pinned,
        eviction=models.eviction,
        max_growth_bytes=int(models.max_growth_mb * _MB) if models.max_growth_mb else None,
    )


def _model_listener(status: StatusReporter, metrics: Metrics) -> Callable[[ModelEvent], None]:
    """Model events become status events and metrics alike."""

    def on_event(event: ModelEvent) -> None:
        status.on_event(event)
        metrics.observe_model(event)

    return on_event


def _circuit_reporter(status: StatusReporter) -> Callable[[ModelSpec, bool, str], None]:
    """Circuit transitions are model-status events like loads and evictions."""

    def on_circuit(spec: ModelSpec, opened: bool, why: str) -> None:
        log.warning("circuit %s for %s: %s", "opened" if opened else "closed", spec.key, why)
        status.report(
            ModelEvent(spec.id, spec.version, "circuit_open" if opened else "circuit_closed", message=why)
        )

    return on_circuit


def _cache(settings: Settings) -> ResultCache | None:
    if not settings.cache.enabled:
        return None
    return ResultCache(
        max_bytes=int(settings.cache.max_mb * _MB),
        ttl_s=settings.cache.ttl_s,
        redis_url=settings.cache.redis_url,
    )


def _decoder(settings: Settings) -> Decoder:
    batching = settings.batching
    return Decoder(
        batching.decode_threads,
        batching.decode_processes,
        process_max_item_bytes=batching.decode_process_max_item_bytes,
        timeout_s=batching.decode_timeout_s,
    )


def _pipelines(settings: Settings) -> dict[str, Pipeline]:
    """The pipelines whose extras are installed, held to the configured input limits."""
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
    return pipelines
