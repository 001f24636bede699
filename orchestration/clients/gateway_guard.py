"""Who may call the gateway, and how much one caller may make it take, decided before a body is read.

The gateway publishes to topics every ALT_LAS team shares, so a caller who can
reach it can spend altlas's models. Off loopback it therefore requires an API
key. Bodies are bounded twice: a declared ``Content-Length`` over the limit is
answered 413 before a byte is read; a chunked body is counted while it streams
and refused the moment it passes the limit, so no body is ever buffered whole
first. Calls in progress are capped, and a call over the cap is answered 503 at
once rather than queued, so a burst costs neither memory nor open result futures.
``/healthz`` stays open: container health checks carry no key.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from altlas.orchestration.app.settings import GatewaySettings, Settings
from altlas.schemas.errors import ErrorCode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths served without a key or a concurrency slot.
OPEN_PATHS = frozenset({"/healthz"})
_BASE64_SLACK = 64 * 1024


class ExposureError(ValueError):
    """The gateway was asked to listen beyond loopback without an API key."""


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` keeps the gateway on this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_exposure(host: str, gateway: GatewaySettings) -> None:
    """Refuse to serve off loopback without a key, and refuse empty keys anywhere."""
    keys = [key.get_secret_value() for key in gateway.api_keys]
    if any(not key.strip() for key in keys):
        raise ExposureError("gateway.api_keys holds an empty key (is ALTLAS_GATEWAY_API_KEY set?)")
    if not keys and not is_loopback(host):
        raise ExposureError(
            f"the gateway would listen on {host} without authentication: set gateway.api_keys "
            "(ALTLAS_GATEWAY__API_KEYS='[\"KEY\"]') or listen on 127.0.0.1"
        )


def max_body_bytes(settings: Settings) -> int:
    """The body limit: the setting, else the largest payload altlas accepts, as base64 in JSON."""
    if settings.gateway.max_body_bytes is not None:
        return settings.gateway.max_body_bytes
    return settings.limits.max_message_bytes * 4 // 3 + _BASE64_SLACK


class BodyTooLarge(HTTPException):
    """A streamed body passed the limit; raised from ``receive`` inside the body read."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")
        self.limit = limit


def error_body(code: str, message: str) -> dict[str, Any]:
    """The gateway's error envelope (the same as for errors altlas answers)."""
    return {"status": "error", "error": {"code": code, "message": message}}


class GatewayGuard:
    """ASGI middleware: API key, body limits and a cap on calls in progress."""

    def __init__(
        self, app: ASGIApp, *, api_keys: list[str], max_body_bytes: int, max_concurrent: int
    ) -> None:
        self.app = app
        self._keys = [key.encode() for key in api_keys]
        self.max_body_bytes = max_body_bytes
        self.max_concurrent = max_concurrent
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self._keys and not self._authorized(headers):
            await _reply(
                send,
                401,
                "UNAUTHORIZED",
                "an API key is required",
                {"www-authenticate": 'Bearer realm="altlas"'},
            )
            return
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reply(send, 400, ErrorCode.INVALID_PAYLOAD, "Content-Length is not a number")
                return
            if int(declared) > self.max_body_bytes:
                await _reply(
                    send,
                    413,
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"a body of {declared} bytes exceeds the gateway's limit of {self.max_body_bytes}",
                )
                return
        if self.active >= self.max_concurrent:
            await _reply(
                send,
                503,
                "GATEWAY_BUSY",
                f"{self.max_concurrent} calls are in progress; retry shortly",
                {"retry-after": "1"},
            )
            return
        self.active += 1
        try:
            await self.app(scope, self._counted(receive), send)
        finally:
            self.active -= 1

    def _authorized(self, headers: dict[str, str]) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        candidate = token.strip() if scheme.lower() == "bearer" else headers.get("x-api-key", "")
        given = candidate.encode("latin-1")
        # compare_digest with every key: the time taken does not say how much of a key matched.
        return bool(given) and any([hmac.compare_digest(given, key) for key in self._keys])

    def _counted(self, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        return counted


async def _reply(
    send: Send, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps(error_body(code, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    # The body is unread: ask the server to close the connection rather than drain it.
    raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def install_guard(app: FastAPI, settings: Settings) -> None:
    """Put the guard in front of every route of ``app``, with limits from ``settings``."""
    app.add_middleware(
        GatewayGuard,
        api_keys=[key.get_secret_value() for key in settings.gateway.api_keys],
        max_body_bytes=max_body_bytes(settings),
        max_concurrent=settings.gateway.max_concurrent,
    )

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(
            error_body(ErrorCode.PAYLOAD_TOO_LARGE, str(exc.detail)),
            status_code=413,
            headers={"connection": "close"},
        )
