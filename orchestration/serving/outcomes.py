"""What became of one consumed record: the messages answering it and what metrics need of them.

Kept apart from the code that builds the messages (answers.py) because the
loop, the processor and the metrics all read outcomes without building any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from altlas.consumers.records import InboundRecord
from altlas.models.errors import ModelError
from altlas.producers.publisher import OutboundMessage
from altlas.schemas.errors import AltlasError, ErrorCode
from altlas.schemas.types import AnyRequest, ErrorInfo, ResultStatus


@dataclass
class Outcome:
    """The messages answering one consumed record."""

    record: InboundRecord
    messages: list[OutboundMessage]
    request: AnyRequest | None = None
    error: ErrorInfo | None = None
    chunks: Any = None  # a ChunkStream whose partial results are already being published
    result: ResultSummary | None = None  # what was sent, for metrics and replays
    dead_letter: bool = False


class ResultSummary(NamedTuple):
    """What metrics and replays need of a result, without decoding it again (one per answer)."""

    status: ResultStatus
    task: str
    model_id: str
    model_version: str
    total_ms: float
    attributes: dict[str, str]

    @classmethod
    def of(cls, datum: dict[str, Any]) -> ResultSummary:
        """Summarise a result datum."""
        return cls(
            ResultStatus(datum["status"]),
            datum["task"],
            datum["model_id"],
            datum["model_version"],
            datum["timings"]["total_ms"],
            datum["attributes"],
        )


def error_info(exc: BaseException, *, default: ErrorCode = ErrorCode.INTERNAL) -> ErrorInfo:
    """The wire form of an exception: stable code, message, retriable flag."""
    if isinstance(exc, AltlasError):
        return ErrorInfo(code=exc.code.value, message=exc.message, retriable=exc.retriable)
    if isinstance(exc, ModelError):
        return ErrorInfo(code=exc.code, message=str(exc), retriable=exc.retriable)
    return ErrorInfo(code=default.value, message=f"{type(exc).__name__}: {exc}", retriable=False)
