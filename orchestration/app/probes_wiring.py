"""The pages an instance answers on its metrics port: /metrics, /healthz and /readyz."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from altlas.orchestration.app.components import Components
from altlas.orchestration.observability.loop_lag import LoopLag
from altlas.orchestration.observability.probes import Handler, HttpEndpoints, json_response
from altlas.orchestration.serving.loop import StreamWorker

log = logging.getLogger(__name__)


class Probes:
    """What a scraper and a Kubernetes probe see of one instance; nothing is served without a port."""

    def __init__(
        self,
        parts: Components,
        streams: Mapping[str, StreamWorker],
        loop_lag: LoopLag,
        *,
        started: asyncio.Event,
        stopping: asyncio.Event,
    ) -> None:
        self.parts = parts
        self.streams = streams  # filled when the instance starts
        self.loop_lag = loop_lag
        self.started = started
        self.stopping = stopping
        m = parts.settings.metrics
        self.endpoints: HttpEndpoints | None = None
        if m.port is not None:
            routes: dict[str, Handler] = {
                "/metrics": self.metrics_page,
                "/healthz": self.healthz,
                "/readyz": self.readyz,
            }
            self.endpoints = HttpEndpoints(m.host, m.port, routes, attempts=m.port_attempts)

    async def start(self) -> None:
        """Listen; a taken port is logged, not raised: it must not keep the instance from serving Kafka."""
        if self.endpoints is None:
            return
        m = self.parts.settings.metrics
        try:
            port = await self.endpoints.start()
            log.info("metrics and health on http://%s:%d", m.host, port)
        except OSError as exc:
            log.error("metrics endpoint not started on %s:%s: %s", m.host, m.port, exc)
            self.endpoints = None

    async def stop(self) -> None:
        """Stop listening."""
        if self.endpoints is not None:
            await self.endpoints.stop()

    async def metrics_page(self) -> tuple[int, str, bytes]:
        """The Prometheus page (the loop-lag maximum is read as it is scraped)."""
        metrics = self.parts.metrics
        metrics.loop_lag_max.set(self.loop_lag.recent_max())
        return 200, "text/plain; version=0.0.4", metrics.render()

    async def healthz(self) -> tuple[int, str, bytes]:
        """Alive: the event loop answers."""
        return json_response(200, {"status": "ok", "instance": self.parts.settings.instance_id})

    async def readyz(self) -> tuple[int, str, bytes]:
        """Ready when started, the broker answers, every modality owns partitions, and defaults are usable."""
        checks: dict[str, object] = {"started": self.started.is_set() and not self.stopping.is_set()}
        try:
            await asyncio.wait_for(self.parts.publisher.client.client.fetch_all_metadata(), 3)
            checks["broker"] = True
        except Exception as exc:
            checks["broker"] = f"unreachable: {exc}"
        assigned = {m: len(w.consumer.assignment()) for m, w in self.streams.items()}
        checks["consumers_assigned"] = all(assigned.values()) and bool(assigned)
        # Records waiting with none answered for stall_s: connected and assigned, but not serving.
        stalled = {m: round(w.progress.stalled_s(), 1) for m, w in self.streams.items()}
        checks["progress"] = all(s < self.parts.settings.process.stall_s for s in stalled.values())
        models = self._default_models()
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

    def _default_models(self) -> dict[str, object]:
        """Each task's default model: True when loadable, else why not."""
        registry, manager, health = self.parts.registry, self.parts.manager, self.parts.health
        models: dict[str, object] = {}
        for task, ref in registry.defaults.items():
            spec = registry.get(ref)
            state = manager.status(spec.key).state
            usable = (
                state != "failed" and not health.is_open(spec) and (spec.path is None or spec.path.exists())
            )
            models[f"{task}={spec.key}"] = usable or f"not loadable (state {state})"
        return models
