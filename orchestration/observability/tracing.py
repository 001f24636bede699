"""OpenTelemetry spans for the path of a request through altlas.

Per request: a CONSUMER span continuing the caller's trace from the W3C
``traceparent`` header, and a PRODUCER span under it whose context goes into
the result's ``traceparent`` header, so the caller's trace continues to
whoever reads the result. Per model batch: one span with a link to every
request span it served (a batch has many parents, which links express and
parent/child cannot), and an inference span under it.

With the exporter set to ``none`` no spans are made at all (the hot path pays
nothing), and the caller's ``traceparent`` and ``tracestate`` are passed on as
they came, but only when well formed: one traceparent in the W3C format and a
tracestate of at most 512 bytes (what W3C asks every hop to carry). Headers are
the request's to write, and a megabyte of tracestate copied onto every answer
would make each of them too large to publish, the dead letter included.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from altlas.orchestration.app.settings import TracingSettings

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENT_FORMAT = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
#: Longest tracestate passed on; W3C asks each hop to propagate at least this much, and no more.
MAX_TRACESTATE_BYTES = 512


def build_provider(settings: TracingSettings) -> TracerProvider | None:
    """A tracer provider for the configured exporter, or None when tracing is off."""
    if settings.exporter == "none":
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
    if settings.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = (
            OTLPSpanExporter(endpoint=settings.otlp_endpoint)
            if settings.otlp_endpoint
            else OTLPSpanExporter()
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class Tracing:
    """Span helpers bound to one tracer provider (or to none)."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("altlas") if provider is not None else None

    def consume_span(
        self, topic: str, headers: Sequence[tuple[str, bytes]], attributes: dict[str, Any]
    ) -> Span | None:
        """Start the span of one consumed request, continuing the caller's trace."""
        if self._tracer is None:
            return None
        carrier = {k: v.decode("latin-1") for k, v in headers if k in (TRACEPARENT, TRACESTATE)}
        parent = _PROPAGATOR.extract(carrier)
        return self._tracer.start_span(
            f"{topic} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic, **attributes},
        )

    @contextmanager
    def batch_span(self, model_key: str, links: Sequence[SpanContext], size: int) -> Iterator[Span | None]:
        """A span for one model batch, linked to the requests it serves."""
        if self._tracer is None:
            yield None
            return
        with self._tracer.start_as_current_span(
            f"batch {model_key}",
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # a batch starts its own trace
            links=[Link(ctx) for ctx in links],
            attributes={"altlas.model": model_key, "altlas.batch_size": size},
        ) as span:
            yield span

    @contextmanager
    def inference_span(self, parent: Span | None, model_key: str) -> Iterator[Span | None]:
        """The model call inside a batch span."""
        if self._tracer is None or parent is None:
            yield None
            return
        with self._tracer.start_as_current_span(
            f"inference {model_key}", context=trace.set_span_in_context(parent)
        ) as span:
            yield span

    def produce_headers(
        self, parent: Span | None, topic: str, incoming: Sequence[tuple[str, bytes]]
    ) -> list[tuple[str, bytes]]:
        """Headers for a produced record: a PRODUCER span's traceparent, or the caller's."""
        if self._tracer is None or parent is None:
            return callers_context(incoming)
        span = self._tracer.start_span(
            f"{topic} publish",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic},
        )
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        span.end()
        return [(k, v.encode("latin-1")) for k, v in carrier.items()]

    @staticmethod
    def end(span: Span | None, error: str | None = None) -> None:
        """Finish a request span, marking errors."""
        if span is None:
            return
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def shutdown(self) -> None:
        """Flush exporters."""
        if self.provider is not None:
            self.provider.shutdown()


def callers_context(incoming: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The caller's trace headers to pass on: the last traceparent if well formed, with the last
    tracestate if it is at most ``MAX_TRACESTATE_BYTES``; nothing else."""
    parent = state = None
    for key, value in incoming:
        if key == TRACEPARENT:
            parent = value
        elif key == TRACESTATE:
            state = value
    if parent is None or not _TRACEPARENT_FORMAT.fullmatch(parent):
        return []
    if state is None or len(state) > MAX_TRACESTATE_BYTES:
        return [(TRACEPARENT, parent)]
    return [(TRACEPARENT, parent), (TRACESTATE, state)]
