"""Kafka out: results, model-status events and dead letters."""

from altlas.producers.publisher import OutboundMessage, PermanentSendError, ProducerConfig, Publisher
from altlas.producers.transactions import Fenced, TransactionAborted, TransactionalPublisher

__all__ = [
    "Fenced",
    "OutboundMessage",
    "PermanentSendError",
    "ProducerConfig",
    "Publisher",
    "TransactionAborted",
    "TransactionalPublisher",
]
