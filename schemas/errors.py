"""Stable error codes and the typed errors that carry them.

A failure travels as a value: the same ``code`` appears in the error result,
the dead letter, the log line and the metrics label, so operators can follow
one failure across all of them. Whether retrying can help is a property of the
error class (``retriable``), never an ``if`` at the call site.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Every code altlas puts on the wire. Append only: callers branch on these."""

    DECODE_ERROR = "DECODE_ERROR"
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
    SCHEMA_MISMATCH = "SCHEMA_MISMATCH"
    UNKNOWN_TASK = "UNKNOWN_TASK"
    UNKNOWN_MODEL = "UNKNOWN_MODEL"
    INVALID_PAYLOAD = "INVALID_PAYLOAD"
    INVALID_PARAMS = "INVALID_PARAMS"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    RESULT_TOO_LARGE = "RESULT_TOO_LARGE"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
    MODEL_FAILED = "MODEL_FAILED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    SCHEMA_REGISTRY_UNAVAILABLE = "SCHEMA_REGISTRY_UNAVAILABLE"
    INTERNAL = "INTERNAL"
    REPLY_TOPIC_REFUSED = "REPLY_TOPIC_REFUSED"
    PUBLISH_REFUSED = "PUBLISH_REFUSED"
    PUBLISH_TIMED_OUT = "PUBLISH_TIMED_OUT"
    DECODE_TIMED_OUT = "DECODE_TIMED_OUT"


class AltlasError(Exception):
    """Base of every error that becomes an error result or a dead letter."""

    code: ErrorCode = ErrorCode.INTERNAL
    retriable: bool = False

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The human-readable part, without the class name."""
        return str(self)


class DecodeError(AltlasError):
    """The bytes are not a record we can read (bad framing, truncated, garbage)."""

    code = ErrorCode.DECODE_ERROR


class UnknownSchemaError(DecodeError):
    """The writer schema (fingerprint or registry id) is not known to us."""

    code = ErrorCode.UNKNOWN_SCHEMA


class SchemaMismatchError(DecodeError):
    """The writer schema is known but cannot be read as the expected record."""

    code = ErrorCode.SCHEMA_MISMATCH


class PayloadTooLargeError(AltlasError):
    """A message, payload or declared size exceeds a configured limit."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class TransientError(AltlasError):
    """A dependency is unavailable for now; the work must be retried, not answered with an error."""

    retriable = True


class SchemaRegistryUnavailableError(TransientError):
    """The schema registry could not be reached or answered with a server error."""

    code = ErrorCode.SCHEMA_REGISTRY_UNAVAILABLE


class InvalidRequestError(AltlasError):
    """The request decoded but asks for something we cannot do."""

    code = ErrorCode.INVALID_PAYLOAD
