"""All configuration of altlas: one pydantic-settings tree.

Sources, highest priority first: explicit overrides (CLI flags), environment
variables ``ALTLAS_<SECTION>__<FIELD>`` (e.g. ``ALTLAS_KAFKA__BOOTSTRAP_SERVERS``),
a YAML file (``--config`` or ``ALTLAS_CONFIG``), then the defaults below. The
plain ``KAFKA_BOOTSTRAP_SERVERS`` variable is honoured too, because test
harnesses and platforms commonly set it. ``altlas config`` prints the
reference generated from these models.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from altlas.schemas.codec import WireFormat
from altlas.schemas.confluent import SubjectStrategy
from altlas.schemas.modalities import MODALITIES as MODALITIES  # re-exported: settings are per modality
from altlas.schemas.modalities import Modality as Modality


def cache_dir() -> Path:
    """Where downloads (Kafka jars, model files) are cached: ``~/.cache/altlas``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "altlas"


class KafkaSettings(BaseModel):
    """How to reach the cluster; passed to every client altlas creates."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    client_id: str = Field("altlas", description="Kafka client.id prefix.")
    group_id: str = Field(
        "altlas", description="Consumer group prefix; each modality uses <prefix>.<modality>."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    wire_format: WireFormat = Field(
        WireFormat.SINGLE_OBJECT,
        description="How altlas frames what it produces; both are accepted on input.",
    )
    schema_registry_url: str | None = Field(None, description="Confluent-compatible schema registry.")
    schema_registry_subject_strategy: SubjectStrategy = SubjectStrategy.TOPIC
    session_timeout_ms: int = Field(
        10_000, description="Consumer-group session timeout (dead member detection)."
    )
    transactional_id: str | None = Field(
        None,
        description="Exactly-once: stable id of this instance's transactional producers; if unset, a "
        "configured instance_id, else <group_id>-<ordinal> (instance_ordinal, or a StatefulSet pod's "
        "hostname); a restarted instance with the same id fences its zombie.",
    )
    allow_unstable_transactional_id: bool = Field(
        False,
        description="Let exactly-once start on the <hostname>-<pid> instance_id, which changes at every "
        "restart, so a zombie is never fenced.",
    )
    metadata_max_age_ms: int = Field(
        60_000,
        ge=1000,
        description="Refresh cluster metadata at least this often (leader errors refresh it at once).",
    )
    retry_backoff_ms: int = Field(100, ge=1, description="Pause before a client retries a failed request.")
    schema_ids: dict[int, str] = Field(
        default_factory=dict, description="Static Confluent schema ids: id -> record name or .avsc path."
    )


class TopicSettings(BaseModel):
    """Topic names and how altlas creates them when missing."""

    text_requests: str = "ai.requests.text"
    vision_requests: str = "ai.requests.vision"
    audio_requests: str = "ai.requests.audio"
    text_results: str = "ai.results.text"
    vision_results: str = "ai.results.vision"
    audio_results: str = "ai.results.audio"
    model_status: str = "ai.models.status"
    model_commands: str = "ai.models.commands"
    dead_letter: str = "ai.deadletter"
    reply_topics: list[str] = Field(
        default_factory=lambda: [r"ai\.results\..+"],
        description="Patterns (full match) a request's reply_topic must match; the modality's results "
        "topic is always allowed, and names starting with _ and altlas's other topics never are.",
    )
    create: bool = Field(True, description="Create missing topics at start.")
    partitions: int = Field(3, ge=1, description="Partitions of topics altlas creates.")
    replication_factor: int | None = Field(
        None, ge=1, description="Replicas of topics altlas creates; unset: the broker's default."
    )

    def requests(self, modality: Modality) -> str:
        """Request topic of a modality."""
        return str(getattr(self, f"{modality}_requests"))

    def results(self, modality: Modality) -> str:
        """Default result topic of a modality."""
        return str(getattr(self, f"{modality}_results"))


class BatchingSettings(BaseModel):
    """Micro-batching pulled from the stream."""

    max_batch: int = Field(
        32, ge=1, description="Most requests per model call (a model's own max_batch wins if lower)."
    )
    max_wait_ms: int = Field(
        5, ge=0, description="After the first record arrives, wait at most this for more."
    )
    fetch_max_records: int = Field(512, ge=1, description="Most records pulled from Kafka per fetch.")
    max_inflight: int = Field(
        16384,
        ge=1,
        description="Records fetched and not yet committable (in flight, or finished behind one that is) "
        "before partitions are paused.",
    )
    max_batches_in_flight: int = Field(
        8,
        ge=1,
        description=(
            "Fetched batches answered at once per modality. Requests that trickle in (LLM chats) come one "
            "per batch: keep it at least the generating slots of that modality's models, or slots idle."
        ),
    )
    max_batch_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Most request bytes per micro-batch (at least one record)."
    )
    max_inflight_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="Request bytes in flight before partitions are paused."
    )
    model_concurrency: int = Field(1, ge=1, description="Batches that may run at once on one model.")
    decode_threads: int = Field(2, ge=1, description="Threads decoding payloads (images, audio).")
    decode_processes: int = Field(
        0, ge=0, description="Worker processes decoding small payloads off the GIL (0: threads only)."
    )
    decode_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A chunk of payloads decoding longer than this, from when it has a thread, is "
        "given up; the payload that overran is answered DECODE_TIMED_OUT.",
    )
    decode_process_max_item_bytes: int = Field(
        64 * 1024, ge=0, description="A model whose inputs are larger decodes on threads instead."
    )


class LimitSettings(BaseModel):
    """Input limits with safe defaults."""

    max_message_bytes: int = Field(16 * 1024 * 1024, description="Larger request records are dead-lettered.")
    max_result_bytes: int = Field(1024 * 1024, description="Producer max.request.size; match the broker's.")
    max_image_pixels: int = Field(40_000_000, description="Declared width x height above this is refused.")
    max_audio_seconds: float = Field(600.0, description="Declared audio duration above this is refused.")
    max_audio_samples: int = Field(
        64_000_000,
        ge=1,
        description="Declared frames x channels above this is refused, and a stream of undeclared "
        "length stops decoding past this many samples (decoded, audio is downmixed block by block, "
        "so only one mono track is ever held).",
    )
    max_text_chars: int = Field(200_000, description="Longer text payloads are refused.")
    max_prompt_tokens: int | None = Field(
        None, description="Prompt token cap (the model's context always applies)."
    )
    send_timeout_s: float = Field(
        30.0,
        gt=0,
        description="How long an answer to a reply topic may keep failing before it is "
        "answered on the results topic instead (altlas's own topics wait for the broker).",
    )
    refusal_ttl_s: float = Field(
        300.0, gt=0, description="How long a reply topic the broker refused stays refused."
    )


class ModelSettings(BaseModel):
    """Where models come from and how much memory they may take."""

    registry: Path | None = Field(
        None,
        description="Model registry YAML. Unset: `altlas run` serves the starter registry; `none`: no model.",
    )
    memory_budget_mb: int | None = Field(
        None, description="Evict idle models beyond this; unlimited if unset."
    )
    trusted_dirs: list[Path] = Field(
        default_factory=list,
        description="Where pickle-based weights (.pt, .pkl...) may load from; the registry's folder and "
        "~/.cache/altlas are always trusted.",
    )
    max_growth_mb: float | None = Field(
        2048.0,
        gt=0,
        description="A model whose batches grow the process's memory by more than this since it loaded is "
        "treated as leaking and restarted (per model: metadata.max_growth_mb); unset disables.",
    )
    eviction: Literal["cost", "lru"] = Field(
        "cost", description="Which idle model goes first: cheapest to reload (cost) or least recently used."
    )


class RoutingSettings(BaseModel):
    """How a model is chosen when a request names only a task."""

    default_strategy: dict[str, str] = Field(
        default_factory=dict,
        description="Task -> strategy (default, performance, accuracy, cost, fallback, ensemble).",
    )
    attempt_timeout_s: float = Field(
        60.0, gt=0, description="Longest a request waits for one model's answer."
    )
    circuit_failures: int = Field(5, ge=1, description="Consecutive model failures that open its circuit.")
    circuit_cooldown_s: float = Field(30.0, gt=0, description="How long an open circuit skips the model.")
    latency_alpha: float = Field(
        0.2, gt=0, le=1, description="Weight of a new sample in the latency average."
    )
    load_penalty_ms: float = Field(
        200.0, ge=0, description="Least load cost `performance` assumes for a model that is not loaded."
    )
    max_models: int = Field(
        8, ge=1, description="Most models one request may name in params.models (fallback, ensemble)."
    )


class CacheSettings(BaseModel):
    """The result cache (requests can opt out with params.cache = false)."""

    enabled: bool = True
    max_mb: float = Field(64.0, gt=0, description="In-process cache size bound.")
    ttl_s: float = Field(600.0, gt=0)
    redis_url: str | None = Field(None, description="Share the cache between instances through Redis.")


class MetricsSettings(BaseModel):
    """The HTTP endpoint for Prometheus metrics (and health checks)."""

    port: int | None = Field(9464, description="0 picks a free port; unset disables the endpoint.")
    port_attempts: int = Field(
        10,
        ge=1,
        description="If the port is taken, try the next ones, this many ports in all; then any free port.",
    )
    host: str = "127.0.0.1"
    monitor_interval_s: float = Field(15.0, gt=0, description="Resource sampling and heartbeat period.")


class TracingSettings(BaseModel):
    """OpenTelemetry export."""

    exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP endpoint, e.g. http://collector:4318/v1/traces."
    )
    service_name: str = "altlas"


class LocalBrokerSettings(BaseModel):
    """The embedded single-node Kafka used by ``altlas broker up``, tests and the demo."""

    kafka_version: str = Field(
        "4.1.2", description="org.apache.kafka:kafka_<scala> version from Maven Central."
    )
    scala_version: str = "2.13"
    heap: str = Field("256m", description="JVM -Xmx of the broker.")
    cluster_heap: str = Field("384m", description="JVM -Xmx of each node of `broker up --brokers N`.")
    jvm_opts: str = Field(
        "-XX:+UseSerialGC -XX:TieredStopAtLevel=1", description="Extra JVM flags (fast start)."
    )
    state_dir: Path = Field(
        default_factory=lambda: cache_dir() / "broker", description="Where `broker up` keeps state."
    )


class LogSettings(BaseModel):
    """Logging: quiet by default, JSON for machines."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    format: Literal["json", "text"] = "text"


class ProcessSettings(BaseModel):
    """The Python process of `altlas run` (an application embedding the orchestrator keeps its own)."""

    stall_s: float = Field(
        120.0,
        gt=0,
        description="A modality whose waiting records have seen none answered for this long "
        "fails /readyz, and records in flight this long count in altlas_stuck_records.",
    )
    drain_timeout_s: float = Field(
        30.0,
        gt=0,
        description="SIGTERM: the longest shutdown takes, in-flight batches drained first; "
        "what is not published by then is answered again after the restart.",
    )

    gc_threshold: int | None = Field(
        50_000,
        ge=700,
        description="Net container allocations between young garbage collections "
        "(Python's default 700 ran the collector with every batch); unset keeps Python's.",
    )
    gc_freeze: bool = Field(
        True,
        description="Exempt what is alive before models load (modules, schemas) from every later collection.",
    )
    gc_sweep_s: float | None = Field(
        2.0,
        gt=0,
        description="A young-generation collection at least this often, so cyclic garbage never waits "
        "for the threshold.",
    )
    gc_full_sweep_s: float | None = Field(
        60.0,
        gt=0,
        description="A full collection at least this often, for cycles that reach into old objects "
        "(it walks every unfrozen object: result cache, loaded models).",
    )


class GatewaySettings(BaseModel):
    """The HTTP gateway (`altlas gateway`): who may call it and how much it accepts."""

    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Keys a caller sends as `Authorization: Bearer KEY` or `X-API-Key: KEY`; required "
        "(at least one) when the gateway listens on anything but loopback; /healthz needs none.",
    )
    max_body_bytes: int | None = Field(
        None,
        ge=1,
        description="Largest request body, checked from Content-Length and while streaming; unset: "
        "limits.max_message_bytes as base64 (x4/3) plus 64 KiB.",
    )
    max_concurrent: int = Field(
        64, ge=1, description="Calls served at once; more are answered 503 at once, with Retry-After."
    )


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """The whole configuration tree."""

    model_config = SettingsConfigDict(
        env_prefix="ALTLAS_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    instance_id: str = Field(
        default_factory=_default_instance,
        description="Names this process in events; <hostname>-<pid> by default.",
    )
    instance_ordinal: int | None = Field(
        None,
        ge=0,
        description="This replica's ordinal (a StatefulSet pod index): gives a stable transactional id.",
    )
    delivery: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="exactly_once: answers and input offsets commit in one transaction per batch.",
    )
    modalities: list[Modality] = Field(
        default_factory=lambda: list(MODALITIES), description="Request topics to serve."
    )
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    local_broker: LocalBrokerSettings = Field(default_factory=LocalBrokerSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    process: ProcessSettings = Field(default_factory=ProcessSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("ALTLAS_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value  # an explicit None (e.g. metrics.port) means "unset", not "ignore"
    return out


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from file, environment and explicit overrides (nested dicts)."""
    if config is not None:
        os.environ["ALTLAS_CONFIG"] = str(config)
    base = Settings()
    env_bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env_bootstrap and not os.environ.get("ALTLAS_KAFKA__BOOTSTRAP_SERVERS"):
        overrides = _deep_merge({"kafka": {"bootstrap_servers": env_bootstrap}}, overrides)
    if not overrides:
        return base
    return Settings.model_validate(_deep_merge(base.model_dump(), overrides))
