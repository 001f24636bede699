"""What can still be read of a request that failed: its id, task, reply topic and metadata.

An error result needs a request id to be useful to the caller, and a reply
topic to reach it; a record that failed intake may still carry both even
though it is not a valid request of our type (wrong schema version, a bad
field further on). Without a readable id there is no error result, only the
dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from altlas.consumers.records import InboundRecord
from altlas.schemas.codec import AvroCodec
from altlas.schemas.types import AnyRequest


@dataclass
class Salvage:
    """What can be read of a request that failed validation."""

    request_id: str
    task: str = "unknown"
    reply_topic: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_request(cls, request: AnyRequest) -> Salvage:
        """A decoded request that failed later: everything is readable."""
        return cls(request.request_id, str(request.task), request.reply_topic, request.metadata)

    @classmethod
    def of_record(cls, rec: InboundRecord, codec: AvroCodec, max_bytes: int) -> Salvage | None:
        """Read the request id of a record that failed to decode as our request type.

        Records over ``max_bytes`` are not decoded again: they were refused for
        their size, and decoding them a second time would cost what refusing saved.
        """
        if rec.value is None or len(rec.value) > max_bytes:
            return None
        try:
            writer = codec.writer_of(rec.value)
            datum: dict[str, Any] = codec.decode(rec.value, writer.name)
        except Exception:
            return None
        request_id = datum.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            return None
        reply = datum.get("reply_topic")
        meta = datum.get("metadata")
        return cls(
            request_id=request_id,
            task=str(datum.get("task", "unknown")),
            reply_topic=reply if isinstance(reply, str) else None,
            metadata=meta if isinstance(meta, dict) else {},
        )
