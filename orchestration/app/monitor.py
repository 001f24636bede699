"""The periodic look at a running instance: resources, consumer lag, stuck records, model heartbeats."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from altlas.orchestration.app.components import Components
from altlas.orchestration.observability.resources import ResourceSampler
from altlas.orchestration.serving.loop import StreamWorker


class Monitor:
    """Every ``monitor_interval_s`` until stopped: metrics, and a status heartbeat per loaded model."""

    def __init__(self, parts: Components, streams: Mapping[str, StreamWorker]) -> None:
        self.parts = parts
        self.streams = streams  # filled when the instance starts
        self.sampler = ResourceSampler()

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every interval until ``stop`` is set."""
        interval = self.parts.settings.metrics.monitor_interval_s
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
                return
            except TimeoutError:
                pass
            await self.sample()

    async def sample(self) -> None:
        """One look: resources (off the loop), heartbeats, then lag and stuck records per modality."""
        metrics, manager = self.parts.metrics, self.parts.manager
        snapshot = await asyncio.to_thread(self.sampler.sample, manager.memory_used)
        metrics.observe_resources(snapshot)
        for key in manager.loaded():
            self.parts.status.report(manager.status(key), {"heartbeat": "true"}, resources=snapshot)
        for modality, worker in self.streams.items():
            for topic, partition, lag in await consumer_lag(worker):
                metrics.consumer_lag.labels(topic, partition).set(lag)
            stuck = worker.progress.stuck(self.parts.settings.process.stall_s)
            metrics.stuck_records.labels(modality).set(stuck)


async def consumer_lag(worker: StreamWorker) -> list[tuple[str, str, int]]:
    """(topic, partition, records behind the high watermark) for each partition the worker owns."""
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
