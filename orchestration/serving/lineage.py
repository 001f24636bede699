"""Where an answer came from: lineage headers and the timings a result carries.

Lineage lets a reader join a result to the record that asked for it and to
the exact model configuration that answered (replays add their own mark), so
reprocessed results can be told from the originals.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.trace import Span

from altlas.consumers.records import InboundRecord
from altlas.models.registry import ModelSpec
from altlas.orchestration.execution.lanes import JobResult
from altlas.orchestration.observability.tracing import Tracing
from altlas.schemas.types import AnyRequest

Headers = list[tuple[str, bytes]]


class Lineage:
    """Builds the headers of every answer of one modality."""

    def __init__(
        self, tracing: Tracing, instance_id: str, *, extra: tuple[tuple[str, bytes], ...] = ()
    ) -> None:
        self.tracing = tracing
        self.instance_id = instance_id.encode()
        self.extra = list(extra)
        self._model_headers: dict[str, Headers] = {}

    def headers(self, span: Span | None, topic: str, rec: InboundRecord, spec: ModelSpec | None) -> Headers:
        """Trace context plus lineage: which record and which model configuration produced this."""
        headers = self.tracing.produce_headers(span, topic, rec.headers)
        headers += [
            ("altlas.instance", self.instance_id),
            ("altlas.source.topic", rec.topic.encode()),
            ("altlas.source.partition", str(rec.partition).encode()),
            ("altlas.source.offset", str(rec.offset).encode()),
        ]
        if spec is not None:
            headers += self._model(spec)
        return headers + self.extra

    def _model(self, spec: ModelSpec) -> Headers:
        """The same three headers per model: built once, not per result."""
        model = self._model_headers.get(spec.key)
        if model is None:
            model = self._model_headers[spec.key] = [
                ("altlas.model.id", spec.id.encode()),
                ("altlas.model.version", spec.version.encode()),
                ("altlas.model.config", spec.config_hash().encode()),
            ]
        return model


def timings(request: AnyRequest | None, job: JobResult | None) -> dict[str, Any]:
    """Where the time went, from the request's created_at to now (a Timings datum)."""
    now = time.time()
    created = request.created_at.timestamp() if request is not None else now
    started = job.started_at if job is not None else now
    return {
        "queued_ms": max(0.0, (started - created) * 1000),
        "inference_ms": job.inference_ms if job is not None else 0.0,
        "batch_size": job.batch_size if job is not None else 0,
        "total_ms": max(0.0, (now - created) * 1000),
    }
