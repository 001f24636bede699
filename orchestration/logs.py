"""Structured, quiet-by-default logging.

JSON lines (or plain text) on stderr with the ``extra`` fields of each call.
aiokafka logs one ERROR per failed connection attempt, tens of thousands a
minute while a broker is down; those repeat lines are rate-limited so an
outage stays readable.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the record's extras as fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
        )
        return f"{base} {extras}" if extras else base


#: aiokafka logs these at ERROR although it retries them by itself (see docs/KAFKA notes):
#: leadership moving after topic creation, coordinator not elected yet. (Connection
#: failures are not in the list: an outage should be visible, rate-limited below.)
TRANSIENT = (
    "NotLeaderForPartitionError",
    "GroupCoordinatorNotAvailableError",
    "NotCoordinatorForGroupError",
    "LeaderNotAvailableError",
    "NotEnoughReplicas",
)


class TransientFilter(logging.Filter):
    """Drops aiokafka's self-healing errors unless the root level is DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka") or logging.getLogger().level <= logging.DEBUG:
            return True
        text = record.getMessage()
        return not any(marker in text for marker in TRANSIENT)


class RepeatFilter(logging.Filter):
    """Lets the same (logger, message template) through at most once per ``interval_s``."""

    def __init__(self, interval_s: float = 10.0, prefixes: tuple[str, ...] = ("aiokafka",)) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.prefixes = prefixes
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, str(record.msg)[:40])
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            record.suppressed_repeats = skipped
        return True


class SecretFilter(logging.Filter):
    """Keeps credentials out of every log line, whoever logs them.

    aiokafka's DEBUG output includes the raw SASL PLAIN exchange (user and
    password); those records are dropped, and any configured secret that still
    appears in a message is masked.
    """

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "SaslAuthenticateRequest" in text or "sasl_auth_bytes=b'\\x00" in text:
            return False
        if any(secret in text for secret in self.secrets):
            for secret in self.secrets:
                text = text.replace(secret, "***")
            record.msg, record.args = text, None
        return True


def setup_logging(level: str = "WARNING", fmt: str = "text", secrets: list[str] | None = None) -> None:
    """Configure the root logger once per process (``secrets`` are masked wherever they appear)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SecretFilter(secrets or []))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # On the handler, not the logger: logger filters do not apply to child loggers.
    handler.addFilter(TransientFilter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.WARNING))


def secrets_of(settings: object) -> list[str]:
    """Every SecretStr value in a settings tree."""
    from pydantic import BaseModel, SecretStr

    found: list[str] = []
    if isinstance(settings, BaseModel):
        for name in type(settings).model_fields:
            value = getattr(settings, name)
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                found += secrets_of(value)
    return found
