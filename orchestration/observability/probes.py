"""A tiny HTTP server on the metrics port: /metrics, /healthz, /readyz.

Hand-written on asyncio streams (a few dozen lines) rather than a web
framework: it serves three GETs, must not share the event loop's fate with a
framework's worker model, and must start and stop with the orchestrator.

Several instances on one host must not fight over one port: when the configured
port is taken, the next ones are tried (``attempts`` ports in all), then any
free port. The port taken is logged and shown in ``/readyz``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]


class HttpEndpoints:
    """GET routes on one port."""

    def __init__(self, host: str, port: int, routes: dict[str, Handler], *, attempts: int = 1) -> None:
        self.host = host
        self.port = port
        self.routes = routes
        self.attempts = attempts
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on the first free port of the range (any free one after it); returns the port taken."""
        wanted = self.port
        candidates = [wanted + i for i in range(self.attempts) if wanted + i <= 65535] if wanted else []
        for port in [*candidates, 0]:
            try:
                self._server = await asyncio.start_server(self._serve, self.host, port)
                break
            except OSError as exc:
                if port == 0:
                    raise
                log.debug("port %d on %s taken: %s", port, self.host, exc)
        assert self._server is not None
        self.port = int(self._server.sockets[0].getsockname()[1])
        if wanted and self.port != wanted:
            log.warning(
                "metrics port %d on %s is taken; this instance serves metrics and health on port %d",
                wanted,
                self.host,
                self.port,
            )
        return self.port

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            handler = self.routes.get(path)
            if len(parts) < 2 or parts[0] != "GET":
                status, ctype, body = 405, "text/plain", b"only GET\n"
            elif handler is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            else:
                status, ctype, body = await handler()
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}.get(
                status, ""
            )
            head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
            await writer.drain()
        except Exception as exc:  # a broken client must not disturb the service
            log.debug("http endpoint: %s", exc)
        finally:
            writer.close()


def json_response(status: int, doc: object) -> tuple[int, str, bytes]:
    """A JSON body with its status."""
    return status, "application/json", json.dumps(doc, default=str).encode() + b"\n"
