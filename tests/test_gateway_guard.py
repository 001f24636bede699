"""When the gateway may listen without a key, and the body limit it derives from altlas's own limits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from altlas.orchestration.app.settings import GatewaySettings, load_settings

pytest.importorskip("fastapi")  # the gateway's extra
from altlas.orchestration.clients.gateway_guard import (
    ExposureError,
    check_exposure,
    is_loopback,
    max_body_bytes,
)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.4.5", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("gateway.internal", False),
    ],
)
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_off_loopback_the_gateway_needs_a_key() -> None:
    check_exposure("127.0.0.1", GatewaySettings())  # local use stays key-free
    with pytest.raises(ExposureError, match="without authentication"):
        check_exposure("0.0.0.0", GatewaySettings())
    check_exposure("0.0.0.0", GatewaySettings.model_validate({"api_keys": ["k-1"]}))


def test_an_empty_key_is_refused_even_on_loopback() -> None:
    # What compose passes when ALTLAS_GATEWAY_API_KEY is not exported: ["" ].
    with pytest.raises(ExposureError, match="empty key"):
        check_exposure("127.0.0.1", GatewaySettings.model_validate({"api_keys": [""]}))
    with pytest.raises(ExposureError, match="empty key"):
        check_exposure("0.0.0.0", GatewaySettings.model_validate({"api_keys": ["k-1", "  "]}))


def test_the_body_limit_follows_the_largest_request_altlas_accepts_as_base64() -> None:
    derived = load_settings(limits={"max_message_bytes": 3 * 1024 * 1024})
    assert max_body_bytes(derived) == 4 * 1024 * 1024 + 64 * 1024
    assert max_body_bytes(load_settings(gateway={"max_body_bytes": 1000})) == 1000


def test_altlas_gateway_refuses_to_listen_on_all_interfaces_without_a_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALTLAS_")}
    env["ALTLAS_KAFKA__BOOTSTRAP_SERVERS"] = "127.0.0.1:1"  # never reached: refused before connecting
    done = subprocess.run(
        [sys.executable, "-m", "altlas.orchestration", "gateway", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "without authentication" in done.stdout + done.stderr
