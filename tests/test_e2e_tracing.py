"""The trace continues from the request's traceparent through batch and inference to the result."""

from __future__ import annotations

import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from altlas.orchestration.app.settings import Settings
from altlas.orchestration.clients.client import AltlasClient, make_request
from altlas.schemas.types import VisionResult
from tests.conftest import serving
from tests.images import solid

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


async def test_spans_form_consume_batch_inference_produce_tree(
    settings: Settings, client: AltlasClient
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with serving(settings, tracer_provider=provider):
        requests = [
            make_request("vision", "classify", solid((9, 9, 9 * i)), model="mean-color") for i in range(3)
        ]
        traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01".encode()
        async with client.reader(client.topics.results("vision")) as reader:
            for req in requests:
                await client.send(req, headers=[("traceparent", traceparent)])
            deadline = time.monotonic() + 30
            records = []
            while len(records) < 3 and time.monotonic() < deadline:
                records += await reader.read(0.5)

    assert len(records) == 3
    spans = exporter.get_finished_spans()
    consume = [s for s in spans if s.kind is SpanKind.CONSUMER]
    produce = [s for s in spans if s.kind is SpanKind.PRODUCER]
    batches = [s for s in spans if s.name.startswith("batch ")]
    inference = [s for s in spans if s.name.startswith("inference ")]
    assert len(consume) == 3 and len(produce) == 3 and batches and inference

    # The request spans continue the caller's trace, as children of its span.
    for span in consume:
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    consume_ids = {s.context.span_id for s in consume}
    # Every request span is linked from the batch that served it.
    linked = {link.context.span_id for b in batches for link in b.links}
    assert consume_ids <= linked
    # Inference runs inside a batch; publishing is a child of the request span.
    batch_ids = {b.context.span_id for b in batches}
    assert all(s.parent is not None and s.parent.span_id in batch_ids for s in inference)
    assert {s.parent.span_id for s in produce if s.parent} == consume_ids
    # The result carries the PRODUCER span's context onward.
    produce_ids = {format(s.context.span_id, "016x") for s in produce}
    for rec in records:
        header = dict(rec.headers)["traceparent"].decode()
        _, trace_id, span_id, _ = header.split("-")
        assert trace_id == TRACE_ID and span_id in produce_ids
        assert isinstance(client.codec.decode_record(rec.value, VisionResult), VisionResult)
