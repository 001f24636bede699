"""The AsyncAPI document: in sync with the schemas and topics, valid AsyncAPI 3, true to the wire."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest
import yaml
from fastavro.schema import to_parsing_canonical_form

from altlas.orchestration.app.settings import Settings, cache_dir, load_settings
from altlas.orchestration.app.topics import topic_plan
from altlas.orchestration.clients.asyncapi import AVRO_SCHEMA_FORMAT, build_asyncapi, render_asyncapi
from altlas.orchestration.devtools.once import build_once
from altlas.schemas.catalog import SchemaCatalog
from altlas.schemas.fingerprint import fingerprint_bytes
from altlas.schemas.types import VisionResult
from tests.conftest import Running
from tests.images import solid

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "asyncapi.yaml"
REGENERATE = "regenerate it: altlas docs asyncapi --output docs/asyncapi.yaml"
# The official AsyncAPI parser (what AsyncAPI Studio and the CLI use) with its Avro schema parser.
NPM_PACKAGES = ("@asyncapi/parser@3.6.6", "@asyncapi/avro-schema-parser@3.0.24")

_VALIDATE_JS = r"""
const path = require('path');
const [root, file] = process.argv.slice(2);
const { Parser, fromFile } = require(path.join(root, 'node_modules/@asyncapi/parser'));
const { AvroSchemaParser } = require(path.join(root, 'node_modules/@asyncapi/avro-schema-parser'));
(async () => {
  const parser = new Parser();
  parser.registerSchemaParser(AvroSchemaParser());
  const { document, diagnostics } = await fromFile(parser, file).parse();
  process.stdout.write(JSON.stringify({
    parsed: document !== undefined,
    channels: document ? document.channels().all().map((c) => c.address()) : [],
    messages: document ? document.allMessages().all().map((m) => m.name()) : [],
    diagnostics: diagnostics.map((d) => ({code: d.code, severity: d.severity, message: d.message,
                                          path: d.path.join('/')})),
  }));
})().catch((e) => { console.error(e); process.exit(2); });
"""


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The committed document is made from the defaults, whatever this shell exports."""
    for name in list(os.environ):
        if name.startswith("ALTLAS_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(name)


@pytest.fixture
def default_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with every default (no environment, no config file)."""
    _clean_env(monkeypatch)
    return load_settings()


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    """docs/asyncapi.yaml, parsed."""
    doc: dict[str, Any] = yaml.safe_load(COMMITTED.read_text())
    return doc


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _channel_messages(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(channel address, message name, message) for every channel's messages, refs followed."""
    out = []
    for channel in doc["channels"].values():
        for name, ref in channel["messages"].items():
            out.append((channel["address"], name, _resolve(doc, ref["$ref"])))
    return out


def test_committed_document_equals_the_generated_one(default_settings: Settings) -> None:
    assert COMMITTED.read_text() == render_asyncapi(default_settings), (
        f"docs/asyncapi.yaml is stale; {REGENERATE}"
    )


def test_cli_writes_the_committed_document(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_") and k != "KAFKA_BOOTSTRAP_SERVERS"
    }
    out = tmp_path / "asyncapi.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "altlas.orchestration", "docs", "asyncapi", "--output", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == COMMITTED.read_text()


def test_every_topic_of_the_plan_is_a_channel(committed: dict[str, Any], default_settings: Settings) -> None:
    addresses = [c["address"] for c in committed["channels"].values()]
    assert sorted(addresses) == sorted(topic_plan(default_settings))
    assert len(addresses) == 9  # 3 request + 3 result topics, status, commands, dead letters


def test_every_message_payload_is_the_catalog_schema_with_its_fingerprint(committed: dict[str, Any]) -> None:
    catalog = SchemaCatalog()
    seen = set()
    for _, name, message in _channel_messages(committed):
        payload = _resolve(committed, message["payload"]["$ref"])
        assert payload["schemaFormat"] == AVRO_SCHEMA_FORMAT
        parsed = fastavro.parse_schema(payload["schema"], named_schemas={})
        fingerprint = fingerprint_bytes(to_parsing_canonical_form(parsed))
        assert fingerprint == catalog.get(name).fingerprint, name
        assert message["x-avro-fingerprint"] == catalog.get(name).fingerprint_hex
        seen.add(catalog.full_name(name))
    assert seen == set(catalog.names())  # every event travels on some topic


def test_keys_and_compaction_are_documented(committed: dict[str, Any]) -> None:
    channels = {c["address"]: c for c in committed["channels"].values()}
    keys = {address: message["bindings"]["kafka"]["key"]["description"] for address, _, message in
            _channel_messages(committed)}  # fmt: skip
    assert "Any key" in keys["ai.requests.vision"]
    assert "request_id" in keys["ai.results.vision"]
    assert "model id" in keys["ai.models.status"]
    assert "model id" in keys["ai.models.commands"]
    status = channels["ai.models.status"]["bindings"]["kafka"]
    assert status["topicConfiguration"]["cleanup.policy"] == ["compact"]
    dead = channels["ai.deadletter"]["bindings"]["kafka"]
    assert dead["topicConfiguration"]["retention.ms"] == 14 * 24 * 3600 * 1000


def test_operations_are_from_altlas_point_of_view(committed: dict[str, Any]) -> None:
    by_action: dict[str, set[str]] = {"send": set(), "receive": set()}
    for op in committed["operations"].values():
        channel = _resolve(committed, op["channel"]["$ref"])
        by_action[op["action"]].add(channel["address"])
        for ref in op["messages"]:  # operation messages must be the channel's own
            assert ref["$ref"].startswith(op["channel"]["$ref"] + "/messages/")
    assert by_action["receive"] == {
        "ai.requests.text",
        "ai.requests.vision",
        "ai.requests.audio",
        "ai.models.commands",
    }
    assert by_action["send"] == {
        "ai.results.text",
        "ai.results.vision",
        "ai.results.audio",
        "ai.models.status",
        "ai.deadletter",
    }
    receive = committed["operations"]["receiveVisionRequests"]
    assert receive["bindings"]["kafka"]["groupId"]["enum"] == ["altlas.vision"]
    assert receive["reply"]["address"]["location"] == "$message.payload#/reply_topic"
    assert _resolve(committed, receive["reply"]["channel"]["$ref"])["address"] == "ai.results.vision"


def test_settings_shape_the_document(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    settings = load_settings(
        kafka={
            "bootstrap_servers": "b1:9093,b2:9093",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "wire_format": "confluent",
            "group_id": "inference",
        },
        topics={"vision_requests": "team.vision.in", "partitions": 12},
        modalities=["vision"],
    )
    doc = build_asyncapi(settings)
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == set(topic_plan(settings)) and "team.vision.in" in addresses
    assert "ai.requests.text" not in addresses  # only the served modalities
    server = doc["servers"]["kafka"]
    assert server["protocol"] == "kafka-secure"
    assert server["variables"]["bootstrap"]["default"] == "b1:9093"
    assert doc["components"]["securitySchemes"]["sasl"]["type"] == "scramSha512"
    binding = doc["components"]["messages"]["VisionResult"]["bindings"]["kafka"]
    assert binding["schemaIdLocation"] == "payload" and binding["schemaIdPayloadEncoding"] == "confluent"
    assert doc["operations"]["receiveVisionRequests"]["bindings"]["kafka"]["groupId"]["enum"] == [
        "inference.vision"
    ]
    assert doc["channels"]["visionRequests"]["bindings"]["kafka"]["partitions"] == 12


async def test_result_headers_on_the_wire_are_the_documented_ones(
    running: Running, settings: Settings, committed: dict[str, Any]
) -> None:
    from altlas.orchestration.app.kafka_clients import client_kwargs
    from altlas.orchestration.app.service import build_codec
    from altlas.orchestration.clients.client import AltlasClient, make_request

    documented = committed["components"]["schemas"]["ResultHeaders"]
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    request = make_request("vision", "classify", solid((250, 10, 10)), model="mean-color@1")
    kwargs = client_kwargs(settings.kafka, client_suffix="test")
    async with AltlasClient(kwargs, build_codec(settings), settings.topics) as c:
        async with c.reader(settings.topics.results("vision")) as reader:
            await c.send(request, headers=[("traceparent", traceparent.encode())])
            records = []
            for _ in range(60):
                records += [r for r in await reader.read(0.5) if r.key == request.request_id.encode()]
                if records:
                    break
    assert records, "no result"
    (rec,) = records
    result = c.codec.decode_record(rec.value, VisionResult)
    assert result.status.value == "ok"
    headers = {k: v.decode() for k, v in rec.headers}
    assert set(headers) <= set(documented["properties"]), set(headers) - set(documented["properties"])
    assert set(documented["required"]) <= set(headers)
    assert headers["traceparent"] == traceparent  # passed through with tracing off
    assert headers["altlas.model.id"] == "mean-color" and headers["altlas.model.version"] == "1"
    assert headers["altlas.source.topic"] == settings.topics.requests("vision")


def _asyncapi_parser() -> Path:
    """The npm packages installed once into ~/.cache/altlas/npm (a lock makes parallel sessions wait)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: cannot run the AsyncAPI parser")
    root = cache_dir() / "npm" / "asyncapi-parser-3.6.6"

    def install() -> None:
        proc = subprocess.run(
            ["npm", "install", "--prefix", str(root), "--no-audit", "--no-fund", "--loglevel=error",
             *NPM_PACKAGES],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            pytest.skip(f"npm install of the AsyncAPI parser failed: {proc.stderr[-500:]}")

    build_once(root, install, stamp="3.6.6")
    return root


def _parse_with_asyncapi_parser(path: Path, tmp_path: Path) -> dict[str, Any]:
    script = tmp_path / "validate.cjs"
    script.write_text(_VALIDATE_JS)
    proc = subprocess.run(
        ["node", str(script), str(_asyncapi_parser()), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_committed_document_is_valid_asyncapi_3_with_valid_avro_payloads(tmp_path: Path) -> None:
    report = _parse_with_asyncapi_parser(COMMITTED, tmp_path)
    errors = [d for d in report["diagnostics"] if d["severity"] == 0]
    warnings = [d for d in report["diagnostics"] if d["severity"] == 1]
    assert report["parsed"] and not errors, errors
    assert not warnings, warnings
    assert len(report["channels"]) == 9
    assert sorted(set(report["messages"])) == sorted(n.split(".")[-1] for n in SchemaCatalog().names())


def test_the_parser_rejects_a_broken_avro_payload(tmp_path: Path) -> None:
    """The validation above can fail: a payload that is not Avro is an error."""
    doc = yaml.safe_load(COMMITTED.read_text())
    doc["components"]["schemas"]["VisionRequest"]["schema"]["fields"][0]["type"] = "no-such-type"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc))
    report = _parse_with_asyncapi_parser(broken, tmp_path)
    assert not report["parsed"]
    assert any(d["severity"] == 0 for d in report["diagnostics"])


def test_secure_settings_give_a_valid_document_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clean_env(monkeypatch)
    settings = load_settings(
        kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "wire_format": "confluent"}
    )
    path = tmp_path / "secure.yaml"
    path.write_text(render_asyncapi(settings))
    report = _parse_with_asyncapi_parser(path, tmp_path)
    assert report["parsed"], [d for d in report["diagnostics"] if d["severity"] == 0]
