"""Kafka out: results, model-status events and dead letters."""

from altlas.producers.publisher import OutboundMessage, PermanentSendError, ProducerConfig, Publisher

__all__ = ["OutboundMessage", "PermanentSendError", "ProducerConfig", "Publisher"]
