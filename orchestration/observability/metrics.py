"""Prometheus metrics, one registry per orchestrator (tests run several in one process)."""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from altlas.models.manager import ModelEvent
from altlas.orchestration.serving.outcomes import Outcome
from altlas.schemas.types import ResourceSnapshot

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The counters, histograms and gauges altlas exports."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "altlas_requests",
            "Requests answered, by outcome.",
            ["modality", "task", "model", "status", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "altlas_request_seconds", "From created_at to the answer.", ["modality", "model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_seconds = Histogram(
            "altlas_inference_seconds",
            "Model time per batch.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "altlas_batch_size", "Requests per model call.", ["model"], buckets=_BATCH_BUCKETS, registry=r
        )
        self.first_token_seconds = Histogram(
            "altlas_time_to_first_token_seconds",
            "Text generation: from joining the model's queue to the first token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.generation_tps = Histogram(
            "altlas_generation_tokens_per_second",
            "Text generation: a request's tokens over its time in its slot.",
            ["model"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.cache = Counter("altlas_cache", "Result cache look-ups.", ["outcome"], registry=r)
        self.dead_letters = Counter(
            "altlas_dead_letters", "Dead letters written.", ["modality", "code"], registry=r
        )
        self.model_events = Counter(
            "altlas_model_events", "Model state changes.", ["model", "state"], registry=r
        )
        self.model_loaded = Gauge("altlas_model_loaded", "1 while a model is loaded.", ["model"], registry=r)
        self.model_memory = Gauge(
            "altlas_model_memory_bytes", "Memory held by a loaded model.", ["model"], registry=r
        )
        self.circuit_open = Gauge(
            "altlas_circuit_open", "1 while a model's circuit is open.", ["model"], registry=r
        )
        self.consumer_lag = Gauge(
            "altlas_consumer_lag", "Records behind the log end.", ["topic", "partition"], registry=r
        )
        self.loop_lag = Histogram(
            "altlas_event_loop_lag_seconds",
            "How late the event loop woke a 50 ms sleeper: how long something held it.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "altlas_event_loop_lag_max_seconds", "The worst event-loop lag of the last 5 seconds.", registry=r
        )
        self.stuck_records = Gauge(
            "altlas_stuck_records",
            "Records in flight for longer than process.stall_s (not answered, not committed).",
            ["modality"],
            registry=r,
        )
        self.process_cpu = Gauge("altlas_process_cpu_percent", "CPU of this process.", registry=r)
        self.process_rss = Gauge("altlas_process_rss_bytes", "Resident memory of this process.", registry=r)
        self.system_memory = Gauge(
            "altlas_system_memory_used_bytes", "Memory used on the machine.", registry=r
        )
        self.gpu_memory = Gauge("altlas_gpu_memory_used_bytes", "GPU memory used.", ["gpu"], registry=r)
        self.gpu_util = Gauge("altlas_gpu_utilization_percent", "GPU utilisation.", ["gpu"], registry=r)

    def observe_outcomes(self, modality: str, outcomes: Sequence[Outcome]) -> None:
        """Count a micro-batch's answered records.

        prometheus_client takes a lock for every increment, and a record costs a
        counter, a histogram bucket and the histogram's sum. A batch's answers
        mostly share one label set, so they are tallied here first and added
        with one increment per label set and bucket.
        """
        seconds: dict[tuple[str, str, str, str, str, str], list[float]] = {}
        dead: Tally[str] = Tally()
        cached: Tally[str] = Tally()
        for outcome in outcomes:
            result = outcome.result
            code = outcome.error.code if outcome.error is not None else ""
            if outcome.dead_letter:
                dead[code] += 1
            if result is None:
                continue
            key = (modality, result.task, result.model_id, result.model_version, result.status.value, code)
            values = seconds.get(key)
            if values is None:
                values = seconds[key] = []
            values.append(result.total_ms / 1000)
            how = result.attributes.get("cache")
            if how is not None:
                cached[how] += 1
            elif (ttft := result.attributes.get("time_to_first_token_ms")) is not None:
                self._observe_generation(result.model_id, result.model_version, result.attributes, ttft)
        for key, values in seconds.items():
            children = self._children.get(key)
            if children is None:  # labels() costs more than the increment: resolve each label set once
                _, task, model_id, version, status, code = key
                model = f"{model_id}@{version}" if model_id else ""
                children = self._children[key] = (
                    self.requests.labels(modality, task, model, status, code),
                    self.request_seconds.labels(modality, model),
                )
            children[0].inc(len(values))
            _observe_all(children[1], values)
        for code, n in dead.items():
            self.dead_letters.labels(modality, code).inc(n)
        for how, n in cached.items():
            self.cache.labels(how).inc(n)

    def _observe_generation(self, model_id: str, version: str, attributes: Any, ttft_ms: str) -> None:
        """A generated text's time to first token and tokens/s (attributes the text pipeline sets)."""
        model = f"{model_id}@{version}"
        with contextlib.suppress(ValueError):
            self.first_token_seconds.labels(model).observe(float(ttft_ms) / 1000)
            self.generation_tps.labels(model).observe(float(attributes.get("tokens_per_second", "0")))

    def observe_batch(self, model: str, size: int, inference_ms: float) -> None:
        """One model call."""
        self.batch_size.labels(model).observe(size)
        self.inference_seconds.labels(model).observe(inference_ms / 1000)

    def observe_model(self, event: ModelEvent) -> None:
        """A model state change."""
        model = f"{event.model_id}@{event.model_version}"
        self.model_events.labels(model, event.state).inc()
        if event.state == "ready":
            self.model_loaded.labels(model).set(1)
            self.model_memory.labels(model).set(event.memory_bytes)
        elif event.state in ("unloaded", "evicted", "failed"):
            self.model_loaded.labels(model).set(0)
            self.model_memory.labels(model).set(0)
        elif event.state in ("circuit_open", "circuit_closed"):
            self.circuit_open.labels(model).set(1 if event.state == "circuit_open" else 0)

    def observe_resources(self, snap: ResourceSnapshot) -> None:
        """A resource sample."""
        self.process_cpu.set(snap.process_cpu_percent)
        self.process_rss.set(snap.process_rss_bytes)
        self.system_memory.set(snap.system_memory_used_bytes)
        for gpu in snap.gpus:
            self.gpu_memory.labels(str(gpu.index)).set(gpu.memory_used_bytes)
            self.gpu_util.labels(str(gpu.index)).set(gpu.utilization_percent)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


def _observe_all(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for each value, as one increment per bucket and one of the sum.

    Reaches into prometheus_client's histogram child (its bounds, bucket and
    sum values, unchanged since 0.4); where those are missing, observes one by one.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    for index, n in Tally(bisect_left(bounds, value) for value in values).items():
        buckets[index].inc(n)  # the first bucket whose bound is >= the value, as observe() picks
    total.inc(sum(values))
