"""The AsyncAPI 3.0 document of altlas's topics, generated from the Avro schemas and the topic settings.

Other teams read it to learn every topic altlas touches, its key, its schema
and its semantics. It is generated, never hand-written, so it cannot drift
from the contracts: ``altlas docs asyncapi`` writes it, and a test regenerates
``docs/asyncapi.yaml`` and compares. Operations are described from altlas's
point of view (it *receives* requests and commands, it *sends* results,
status events and dead letters).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

import yaml

from altlas.orchestration.app.settings import MODALITIES, Modality, Settings
from altlas.orchestration.app.topics import topic_plan
from altlas.schemas.catalog import SchemaCatalog
from altlas.schemas.codec import WireFormat

ASYNCAPI_VERSION = "3.0.0"
AVRO_SCHEMA_FORMAT = "application/vnd.apache.avro+json;version=1.9.0"
KAFKA_BINDING_VERSION = "0.5.0"
#: What a reader finds in a record value; the framing is described in ``info.description``.
CONTENT_TYPE = "avro/binary"

_DESCRIPTION = """\
altlas is an event-driven AI inference orchestrator. Services publish Avro request events to the
request topics; altlas micro-batches them per model and publishes one result per request, model-status
events and dead letters.

**Encoding.** Every value is one Avro record, framed with Avro single-object encoding by default:
`C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema (given for each message
as `x-avro-fingerprint`), then the Avro binary body. With `kafka.wire_format=confluent`, altlas writes
Confluent framing instead (`00`, a 4-byte big-endian schema id from a schema registry, the body). altlas
accepts both framings on input, whatever it writes. Schemas evolve compatibly only: new fields have
defaults, enums have defaults, union branches are appended.

**Keys.** Request topics take any key; records with the same key are answered in order. Results are
keyed by `request_id`, model-status events and model commands by model id, dead letters by the original
record's key.

**Delivery.** At-least-once by default: input offsets are committed only after every answer is
acknowledged, so a consumer of results must tolerate (and can drop, by `request_id`) duplicates. With
`delivery: exactly_once`, a batch's answers and its input offsets commit in one transaction; read the
result topics with `isolation.level=read_committed` to see each answer exactly once.

**Tracing.** A request's W3C `traceparent` header is continued: the result carries the trace context of
altlas's PRODUCER span (or the caller's own when tracing is off).
"""

_REQUEST_KEY = "Any key; records with one key are answered in the order they were written."
_RESULT_KEY = "The request's `request_id` (UTF-8)."
_MODEL_KEY = "The model id (UTF-8), without version."
_DEAD_LETTER_KEY = "The original record's key, unchanged."


def _header(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _request_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Kafka record headers (UTF-8 values); all optional.",
        "properties": {
            "traceparent": _header(
                "W3C trace context; altlas continues this trace.",
                pattern="^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            ),
            "tracestate": _header("W3C trace state, passed along with traceparent."),
        },
    }


def _result_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Kafka record headers (UTF-8 values): trace context and lineage of the answer.",
        "properties": {
            "traceparent": _header(
                "W3C trace context of altlas's PRODUCER span, or the request's own when tracing is off.",
                pattern="^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            ),
            "tracestate": _header("W3C trace state."),
            "altlas.instance": _header("The orchestrator instance that answered."),
            "altlas.source.topic": _header("Topic of the request record this answers."),
            "altlas.source.partition": _header(
                "Partition of the request record (decimal).", pattern="^[0-9]+$"
            ),
            "altlas.source.offset": _header("Offset of the request record (decimal).", pattern="^[0-9]+$"),
            "altlas.model.id": _header("The model that produced the output (absent when none ran)."),
            "altlas.model.version": _header("Its version."),
            "altlas.model.config": _header(
                "Hash of the model's backend, path and params: equal hashes mean equal configuration."
            ),
            "altlas.replay": _header("Present on results of `altlas replay`: the replay's id."),
        },
        "required": [
            "altlas.instance",
            "altlas.source.topic",
            "altlas.source.partition",
            "altlas.source.offset",
        ],
    }


@dataclass(frozen=True)
class _Channel:
    """One topic: what travels on it and what altlas does with it."""

    id: str
    topic: str
    message: str
    title: str
    description: str
    key: str
    headers: str | None
    action: str  # "send" or "receive", from altlas's point of view
    operation: str
    operation_summary: str
    group: str | None = None
    reply: str | None = None


def _channels(settings: Settings) -> list[_Channel]:
    t = settings.topics
    out: list[_Channel] = []
    modalities: list[Modality] = [m for m in MODALITIES if m in settings.modalities]
    for m in modalities:
        name = m.capitalize()
        out.append(
            _Channel(
                id=f"{m}Requests",
                topic=t.requests(m),
                message=f"{name}Request",
                title=f"{name} requests",
                description=f"{name} inference requests from any service. Consumed by the consumer group "
                f"`{settings.kafka.group_id}.{m}`; partitions bound how many instances share the work.",
                key=_REQUEST_KEY,
                headers="RequestHeaders",
                action="receive",
                operation=f"receive{name}Requests",
                operation_summary=f"altlas consumes {m} requests and answers each on the result topic, "
                "or on the request's `reply_topic`.",
                group=f"{settings.kafka.group_id}.{m}",
                reply=f"{m}Results",
            )
        )
    for m in modalities:
        name = m.capitalize()
        out.append(
            _Channel(
                id=f"{m}Results",
                topic=t.results(m),
                message=f"{name}Result",
                title=f"{name} results",
                description=f"One result per {m} request (status ok, error or expired); streamed requests "
                "(`params.stream`) first get `partial` results with the chunks. Requests may name another "
                "`reply_topic`; internal topics are refused as reply topics.",
                key=_RESULT_KEY,
                headers="ResultHeaders",
                action="send",
                operation=f"send{name}Results",
                operation_summary=f"altlas publishes the answer to each {m} request.",
            )
        )
    out.append(
        _Channel(
            id="modelStatus",
            topic=t.model_status,
            message="ModelStatus",
            title="Model status (compacted)",
            description="Every model state change (loading, ready, unloaded, evicted, failed, circuit "
            "open/closed) of every instance, plus periodic heartbeats with resource samples. Compacted: "
            "the latest event per model id stays; read it from the beginning for the current picture.",
            key=_MODEL_KEY,
            headers=None,
            action="send",
            operation="sendModelStatus",
            operation_summary="altlas reports model state changes and answers model commands.",
        )
    )
    out.append(
        _Channel(
            id="modelCommands",
            topic=t.model_commands,
            message="ModelCommand",
            title="Model commands",
            description="Load, unload or status requests for a registry model id (never a path). Every "
            "running instance reads every command and answers on the status topic with the command's id.",
            key=_MODEL_KEY,
            headers=None,
            action="receive",
            operation="receiveModelCommands",
            operation_summary="Every altlas instance reads commands (no consumer group: all instances act).",
        )
    )
    out.append(
        _Channel(
            id="deadLetters",
            topic=t.dead_letter,
            message="DeadLetter",
            title="Dead letters",
            description="Records that could not be answered successfully: the original bytes, headers, "
            "topic, partition and offset, with the error code. Retained 14 days when altlas creates it.",
            key=_DEAD_LETTER_KEY,
            headers=None,
            action="send",
            operation="sendDeadLetters",
            operation_summary="altlas writes a dead letter for every failed record (not for expired ones).",
        )
    )
    return out


def _topic_binding(settings: Settings, config: dict[str, str]) -> dict[str, Any]:
    binding: dict[str, Any] = {"partitions": settings.topics.partitions}
    if settings.topics.replication_factor is not None:  # else the broker's default.replication.factor
        binding["replicas"] = settings.topics.replication_factor
    topic_config: dict[str, Any] = {}
    if "cleanup.policy" in config:
        topic_config["cleanup.policy"] = config["cleanup.policy"].split(",")
    if "retention.ms" in config:
        topic_config["retention.ms"] = int(config["retention.ms"])
    if topic_config:
        binding["topicConfiguration"] = topic_config
    binding["bindingVersion"] = KAFKA_BINDING_VERSION
    return binding


def _message_binding(settings: Settings, key: str) -> dict[str, Any]:
    binding: dict[str, Any] = {"key": {"type": "string", "description": key}}
    if settings.kafka.wire_format is WireFormat.CONFLUENT:
        strategy = {"topic": "TopicIdStrategy", "record": "RecordIdStrategy"}.get(
            settings.kafka.schema_registry_subject_strategy.value, "TopicRecordIdStrategy"
        )
        binding.update(
            schemaIdLocation="payload", schemaIdPayloadEncoding="confluent", schemaLookupStrategy=strategy
        )
    binding["bindingVersion"] = KAFKA_BINDING_VERSION
    return binding


def _server(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    kafka = settings.kafka
    server: dict[str, Any] = {
        "host": "{bootstrap}",
        "protocol": "kafka-secure" if "SSL" in kafka.security_protocol else "kafka",
        "description": f"The Kafka cluster (security protocol {kafka.security_protocol}).",
        "variables": {
            "bootstrap": {
                "default": kafka.bootstrap_servers.split(",")[0].strip(),
                "description": "A bootstrap server (host:port); `kafka.bootstrap_servers` in the settings.",
            }
        },
    }
    schemes: dict[str, Any] = {}
    if kafka.security_protocol.startswith("SASL"):
        mechanism = kafka.sasl_mechanism or "PLAIN"
        kind = {"PLAIN": "plain", "SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}[mechanism]
        schemes["sasl"] = {"type": kind, "description": f"SASL {mechanism} (kafka.sasl_username/password)."}
    if "SSL" in kafka.security_protocol and kafka.ssl_certfile is not None:
        schemes["mtls"] = {"type": "X509", "description": "Client certificate (kafka.ssl_certfile/keyfile)."}
    if schemes:
        server["security"] = [{"$ref": f"#/components/securitySchemes/{name}"} for name in schemes]
    return server, schemes


def _message(channel: _Channel, catalog: SchemaCatalog, settings: Settings) -> dict[str, Any]:
    info = catalog.get(channel.message)
    bundled = catalog.bundled(channel.message)
    message: dict[str, Any] = {
        "name": channel.message,
        "title": channel.message,
        "summary": str(bundled.get("doc", "")),
        "contentType": CONTENT_TYPE,
        "payload": {"$ref": f"#/components/schemas/{channel.message}"},
    }
    if channel.headers is not None:
        message["headers"] = {"$ref": f"#/components/schemas/{channel.headers}"}
    if any(f["name"] == "request_id" for f in bundled.get("fields", [])):
        message["correlationId"] = {
            "description": "Requests and their results share request_id.",
            "location": "$message.payload#/request_id",
        }
    message["bindings"] = {"kafka": _message_binding(settings, channel.key)}
    message["x-avro-fingerprint"] = info.fingerprint_hex
    return message


def build_asyncapi(settings: Settings, catalog: SchemaCatalog | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for these settings' topics, as plain data."""
    catalog = catalog or SchemaCatalog()
    plan = topic_plan(settings)
    channels_spec = _channels(settings)
    described = {c.topic for c in channels_spec}
    if described != set(plan):  # a topic added to the plan must be described here too
        raise RuntimeError(f"topics without a channel description: {sorted(set(plan) - described)}")
    server, schemes = _server(settings)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "RequestHeaders": _request_headers(),
        "ResultHeaders": _result_headers(),
    }
    for c in channels_spec:
        channels[c.id] = {
            "address": c.topic,
            "title": c.title,
            "description": f"{c.description}\n\nKey: {c.key}",
            "messages": {c.message: {"$ref": f"#/components/messages/{c.message}"}},
            "bindings": {"kafka": _topic_binding(settings, plan[c.topic])},
        }
        operation: dict[str, Any] = {
            "action": c.action,
            "channel": {"$ref": f"#/channels/{c.id}"},
            "summary": c.operation_summary,
            "messages": [{"$ref": f"#/channels/{c.id}/messages/{c.message}"}],
        }
        if c.group is not None:
            operation["bindings"] = {
                "kafka": {
                    "groupId": {"type": "string", "enum": [c.group]},
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            }
        if c.reply is not None:
            reply_message = next(r.message for r in channels_spec if r.id == c.reply)
            operation["reply"] = {
                "address": {
                    "description": "The request's reply_topic when set (internal topics are refused); "
                    "otherwise the modality's result topic.",
                    "location": "$message.payload#/reply_topic",
                },
                "channel": {"$ref": f"#/channels/{c.reply}"},
                "messages": [{"$ref": f"#/channels/{c.reply}/messages/{reply_message}"}],
            }
        operations[c.operation] = operation
        messages[c.message] = _message(c, catalog, settings)
        schemas[c.message] = {"schemaFormat": AVRO_SCHEMA_FORMAT, "schema": catalog.bundled(c.message)}
    components: dict[str, Any] = {"schemas": schemas, "messages": messages}
    if schemes:
        components["securitySchemes"] = schemes
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "altlas",
            "version": importlib.metadata.version("altlas"),
            "description": _DESCRIPTION,
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {"kafka": server},
        "channels": channels,
        "operations": operations,
        "components": components,
    }


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors and aliases, so each schema reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)

HEADER = (
    "# Generated by `altlas docs asyncapi` from the Avro schemas (schemas/*.avsc) and the topic\n"
    "# settings. Do not edit by hand: change the schemas or orchestration/clients/asyncapi.py\n"
    "# and regenerate.\n"
)


def render_asyncapi(settings: Settings, catalog: SchemaCatalog | None = None) -> str:
    """The document as YAML text, with a do-not-edit header."""
    body = yaml.dump(
        build_asyncapi(settings, catalog),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )
    return HEADER + body
