"""Kafka in: micro-batching consumers, offset tracking and backpressure.

Consumers know Kafka and records, never models: they hand batches to the
orchestrator and learn back which records are finished.
"""

from altlas.consumers.offsets import OffsetTracker
from altlas.consumers.records import InboundRecord
from altlas.consumers.stream import BatchingConfig, BatchingConsumer

__all__ = ["BatchingConfig", "BatchingConsumer", "InboundRecord", "OffsetTracker"]
