"""A Kafka record as the rest of altlas sees it: plain data, no client objects."""

from __future__ import annotations

from typing import Any, NamedTuple


# NamedTuples, not frozen dataclasses: one is built per record and per answer, and a frozen
# dataclass's __init__ (an object.__setattr__ call per field) cost four times as much.
class InboundRecord(NamedTuple):
    """One consumed record, with everything a dead letter must carry."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int
    epoch: int = 0  # the consumer's assignment epoch when fetched (consumers/ownership.py)
    unreadable: str | None = None  # why the client could not parse it (consumers/unreadable.py)

    def header(self, name: str) -> bytes | None:
        """Value of the last header called ``name``."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    @classmethod
    def from_consumer_record(cls, rec: Any, epoch: int = 0) -> InboundRecord:
        """Copy an aiokafka ConsumerRecord."""
        return cls(
            topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            key=rec.key,
            value=rec.value,
            headers=tuple([(k, bytes(v) if v is not None else b"") for k, v in rec.headers])
            if rec.headers
            else (),
            timestamp_ms=int(rec.timestamp or 0),
            epoch=epoch,
        )
