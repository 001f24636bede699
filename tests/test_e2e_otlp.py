"""Spans leave the process over OTLP/HTTP, as protobuf, to whatever collector is configured."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from altlas.orchestration.clients.client import make_request
from tests.conftest import connect, isolated_settings, serving
from tests.images import solid


class _Collector(BaseHTTPRequestHandler):
    received: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
            msg = ExportTraceServiceRequest()
            msg.ParseFromString(body)
            _Collector.received.append(msg)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_otlp_exporter_sends_the_request_spans(kafka_bootstrap: str, registry_file: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    settings = isolated_settings(
        kafka_bootstrap,
        registry_file,
        tracing={"exporter": "otlp", "otlp_endpoint": endpoint, "service_name": "altlas-t"},
    )
    try:
        # Leaving the block shuts the orchestrator down, which flushes the batch span processor synchronously.
        async with serving(settings), connect(settings) as client:
            result = await client.request(
                make_request("vision", "classify", solid((1, 2, 3)), model="mean-color")
            )
    finally:
        server.shutdown()
    assert result is not None
    spans = [
        s
        for req in _Collector.received
        for rs in req.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    names = {s.name for s in spans}
    assert f"{settings.topics.requests('vision')} process" in names
    assert any(n.startswith("batch mean-color") for n in names)
    resources = [rs.resource for req in _Collector.received for rs in req.resource_spans]
    assert any(
        a.key == "service.name" and a.value.string_value == "altlas-t"
        for r in resources
        for a in r.attributes
    )
