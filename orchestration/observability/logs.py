"""Structured, quiet-by-default logging.

JSON lines (or plain text) on stderr with the ``extra`` fields of each call.
aiokafka logs one ERROR per failed connection attempt, tens of thousands a
minute while a broker is down; those repeat lines are rate-limited so an
outage stays readable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from typing import Any
from urllib.parse import urlsplit

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
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
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


#: ``scheme://user:password@`` (or ``scheme://token@``) in any text: a Redis, registry or OTLP URL.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
#: ``password=...``-style pairs (a name ending in password, secret, token...), as in URL queries and reprs.
_SECRET_NAME = r"[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
_SECRET_KEY = re.compile(rf"{_SECRET_NAME}", re.IGNORECASE)
_SECRET_PAIR = re.compile(
    rf"(?P<name>\b{_SECRET_NAME})\b"
    r"(?P<sep>\s*[=:]\s*)(?P<quote>['\"]?)(?P<value>[^'\"&\s,;)}\]]+)",
    re.IGNORECASE,
)
MASK = "***"


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["userinfo"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if colon else f"{match['scheme']}{MASK}@"


def mask_text(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` with URL credentials, ``password=...`` values and every known secret replaced by ``***``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "@" in text:
        text = _URL_USERINFO.sub(_mask_userinfo, text)
    return _SECRET_PAIR.sub(lambda m: f"{m['name']}{m['sep']}{m['quote']}{MASK}", text)


def mask_url(url: str) -> str:
    """A URL safe to log: its password (or a lone token before ``@``) and secret query values masked."""
    return mask_text(url)


def _mask_value(value: Any, secrets: list[str]) -> Any:
    """A log field with secrets masked; containers are copied, other objects become masked text if needed."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return mask_text(value, secrets)
    if isinstance(value, dict):
        return {
            k: MASK if isinstance(k, str) and _SECRET_KEY.fullmatch(k) else _mask_value(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask_value(v, secrets) for v in value]
    text = str(value)
    masked = mask_text(text, secrets)
    return value if masked == text else masked


class SecretFilter(logging.Filter):
    """Keeps credentials out of every log line, whoever logs them.

    Everything a formatter prints is masked: the message, every ``extra`` field
    (nested ones too), the traceback and the stack. Known secrets (SecretStr
    settings, passwords in configured URLs) are replaced wherever they appear;
    so are the credentials of any URL and ``password=``-style values, which
    catch secrets altlas was never told about (a URL in a driver's error).
    aiokafka's DEBUG output includes the raw SASL PLAIN exchange (user and
    password); those records are dropped.
    """

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "SaslAuthenticateRequest" in text or "sasl_auth_bytes=b'\\x00" in text:
            return False
        masked = mask_text(text, self.secrets)
        if masked != text:
            record.msg, record.args = masked, None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and not key.startswith("_"):
                setattr(record, key, _mask_value(value, self.secrets))
        if record.exc_info:
            # Formatters print exc_text when it is set; dropping exc_info keeps any formatter
            # from rendering the unmasked exception again.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info, self.secrets)
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
    """Every secret in a settings tree: SecretStr values (in lists and maps too) and passwords in URLs."""
    from pydantic import BaseModel, SecretStr

    found: list[str] = []
    if isinstance(settings, SecretStr):
        found.append(settings.get_secret_value())
    elif isinstance(settings, BaseModel):
        for name in type(settings).model_fields:
            found += secrets_of(getattr(settings, name))
    elif isinstance(settings, dict):
        for value in settings.values():
            found += secrets_of(value)
    elif isinstance(settings, list | tuple):
        for value in settings:
            found += secrets_of(value)
    elif isinstance(settings, str) and "://" in settings and "@" in settings:
        with contextlib.suppress(ValueError):
            parts = urlsplit(settings)
            found += [p for p in (parts.password,) if p]
            if parts.username and parts.password is None:
                found.append(parts.username)  # a lone token before @
    return [secret for secret in found if secret]
