"""Secrets never reach a log line: messages, extra fields, tracebacks, stacks and URLs are masked."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from altlas.orchestration.app.settings import load_settings
from altlas.orchestration.observability.logs import mask_url, secrets_of, setup_logging

SASL = "sasl-pw-7f3a"
REDIS = "redis-pw-91c2"
REGISTRY = "registry-pw-55d0"
API_KEY = "gw-key-0b6e"
OTLP_TOKEN = "otlp-token-c4e1"


@pytest.fixture
def configured() -> list[str]:
    """The secrets ``altlas run`` finds in settings that hold every kind of secret."""
    settings = load_settings(
        kafka={
            "sasl_password": SASL,
            "schema_registry_url": f"http://reader:{REGISTRY}@registry:8081",
        },
        cache={"redis_url": f"redis://cache:{REDIS}@redis:6379/0"},
        gateway={"api_keys": [API_KEY]},
        tracing={"otlp_endpoint": f"https://{OTLP_TOKEN}@collector:4318/v1/traces"},
    )
    return secrets_of(settings)


@contextmanager
def logging_as_run(secrets: list[str], fmt: str = "json") -> Iterator[None]:
    """``setup_logging`` as ``altlas run`` calls it, inside the test (so it writes to capsys's stderr)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging("INFO", fmt, secrets)
    try:
        yield
    finally:
        root.handlers[:], root.level = saved


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_secrets_of_finds_secretstr_values_key_lists_and_url_passwords(configured: list[str]) -> None:
    assert {SASL, REDIS, REGISTRY, API_KEY, OTLP_TOKEN} <= set(configured)
    assert "reader" not in configured and "cache" not in configured  # user names are not secrets


def test_extra_fields_are_masked_at_any_depth(
    configured: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with logging_as_run(configured):
        logging.getLogger("altlas.test").warning(
            "cache down",
            extra={
                "url": f"redis://cache:{REDIS}@redis:6379/0",
                "attempt": 3,
                "client": {
                    "password": "never-configured-1",
                    "peers": [f"http://reader:{REGISTRY}@registry:8081"],
                },
                "note": f"sasl said no to {SASL}",
            },
        )
    (line,) = _lines(capsys.readouterr().err)
    text = json.dumps(line)
    for secret in (REDIS, REGISTRY, SASL, "never-configured-1"):
        assert secret not in text
    assert line["url"] == "redis://cache:***@redis:6379/0"
    assert line["attempt"] == 3  # numbers stay numbers
    assert line["client"] == {"password": "***", "peers": ["http://reader:***@registry:8081"]}
    assert line["note"] == "sasl said no to ***"


def test_message_arguments_and_unconfigured_url_credentials_are_masked(
    configured: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with logging_as_run(configured):
        log = logging.getLogger("altlas.test")
        log.warning("using registry %s with key %s", f"http://reader:{REGISTRY}@registry:8081", API_KEY)
        log.warning("other store at postgres://app:hunter2-db@db/x?sslmode=require&password=hunter3-q")
    first, second = _lines(capsys.readouterr().err)
    assert first["msg"] == "using registry http://reader:***@registry:8081 with key ***"
    assert second["msg"] == "other store at postgres://app:***@db/x?sslmode=require&password=***"


def test_tracebacks_and_stacks_are_masked(configured: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with logging_as_run(configured):
        log = logging.getLogger("altlas.test")
        try:
            raise ConnectionError(f"cannot reach redis://cache:{REDIS}@redis:6379/0 (auth {SASL})")
        except ConnectionError:
            log.exception("cache failed")
        log.warning("where %s is used", OTLP_TOKEN, stack_info=True)
    err = capsys.readouterr().err
    for secret in (REDIS, SASL, OTLP_TOKEN):
        assert secret not in err
    failed, where = _lines(err)
    assert "ConnectionError: cannot reach redis://cache:***@redis:6379/0 (auth ***)" in str(failed["exc"])
    assert "Traceback" in str(failed["exc"])
    assert "test_tracebacks_and_stacks_are_masked" in str(where["stack"])


def test_text_format_masks_extras_and_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    with logging_as_run([SASL], fmt="text"):
        try:
            raise RuntimeError(f"login with {SASL} refused")
        except RuntimeError:
            logging.getLogger("altlas.test").exception("start failed", extra={"dsn": "redis://:tok-9@r:1"})
    err = capsys.readouterr().err
    assert SASL not in err and "tok-9" not in err
    assert "RuntimeError: login with *** refused" in err
    assert "dsn=redis://:***@r:1" in err


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://user:pass@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:pass@host", "redis://:***@host"),
        ("https://token@registry.example", "https://***@registry.example"),
        ("http://registry:8081/subjects?api_key=k1&x=2", "http://registry:8081/subjects?api_key=***&x=2"),
        (
            "http://registry:8081/subjects/ai.results.text-value",
            "http://registry:8081/subjects/ai.results.text-value",
        ),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_ordinary_fields_are_left_alone(configured: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with logging_as_run(configured):
        logging.getLogger("altlas.test").warning(
            "batch done max_prompt_tokens=512 tokens: 40", extra={"topic": "ai.results.text", "tokens": 40}
        )
    (line,) = _lines(capsys.readouterr().err)
    assert line["msg"] == "batch done max_prompt_tokens=512 tokens: 40"
    assert line["topic"] == "ai.results.text" and line["tokens"] == 40
