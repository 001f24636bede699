"""A thin HTTP gateway for clients of the old REST endpoints that cannot speak Kafka.

Each call becomes one request event on the modality's request topic, keyed by
a fresh request id and carrying a deadline equal to the HTTP timeout (so
altlas does not work for a caller that gave up); the gateway then waits for
that id on the result topic. It holds one producer and one long-lived reader
per result topic for all HTTP requests: a background task reads results and
resolves the waiting requests' futures by key, so a burst of calls costs no
consumer start-ups. The model list comes from the registry file (when the
gateway has one) and the compacted status topic (which instance has which
model in which state). Several gateway instances may run side by side: each
reads every result and ignores the ids it is not waiting for. Who may call it,
and how much one call may send, is decided in front of it (``gateway_guard``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Literal

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from altlas.models.registry import ModelRegistry
from altlas.orchestration.app.kafka_clients import client_kwargs
from altlas.orchestration.app.service import build_codec, load_registry
from altlas.orchestration.app.settings import Modality, Settings
from altlas.orchestration.app.topics import ensure_topics, topic_plan
from altlas.orchestration.clients.client import AltlasClient, TopicReader, make_request
from altlas.orchestration.clients.gateway_guard import install_guard
from altlas.orchestration.execution.sniff import modality_of, sniff
from altlas.schemas.errors import ErrorCode
from altlas.schemas.modalities import RESULT_TYPES
from altlas.schemas.types import (
    AnyRequest,
    ModelStatus,
    ParamValue,
    Result,
    ResultStatus,
    Speech,
)

log = logging.getLogger(__name__)

#: HTTP status of an error result, by error code; anything not listed is a 500.
HTTP_STATUS: dict[str, int] = {
    ErrorCode.DECODE_ERROR: 400,
    ErrorCode.UNKNOWN_SCHEMA: 400,
    ErrorCode.SCHEMA_MISMATCH: 400,
    ErrorCode.INVALID_PAYLOAD: 400,
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.UNKNOWN_TASK: 404,
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.MODEL_UNAVAILABLE: 503,
    ErrorCode.SCHEMA_REGISTRY_UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
}
#: Query/form fields that steer the gateway rather than being model params.
_CONTROL_FIELDS = frozenset({"model", "timeout_s"})
_MAX_TIMEOUT_S = 600.0


class GatewayError(Exception):
    """A call the gateway answers itself, before or instead of a result."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _TopicFollower:
    """Follows one topic on a task of its own for as long as the gateway runs.

    The gateway has a single reader per topic, so a broker hiccup is logged and
    retried, never the end of it; each record goes to ``_handle``.
    """

    def __init__(self, client: AltlasClient, topic: str, *, from_beginning: bool) -> None:
        self.client = client
        self.topic = topic
        self._from_beginning = from_beginning
        self._reader: TopicReader | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Position the reader (end of the topic, or its beginning) and start following."""
        self._reader = self.client.reader(self.topic, from_beginning=self._from_beginning)
        await self._reader.start()
        self._task = asyncio.create_task(self._run(), name=f"gateway-{self.topic}")

    def _handle(self, key: bytes | None, value: bytes | None) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        assert self._reader is not None
        while True:
            try:
                records = await self._reader.read(0.5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading %s failed: %s; retrying", self.topic, exc)
                await asyncio.sleep(1.0)
                continue
            for rec in records:
                self._handle(rec.key, rec.value)

    async def stop(self) -> None:
        """Stop following the topic."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        if self._reader is not None:
            await self._reader.stop()


class ResultWaiter(_TopicFollower):
    """Reads one result topic and resolves the futures of the requests waiting on it.

    It reads from the end of the topic, positioned before any request is sent.
    """

    def __init__(self, client: AltlasClient, modality: Modality, topic: str) -> None:
        super().__init__(client, topic, from_beginning=False)
        self.result_type = RESULT_TYPES[modality]
        self._pending: dict[str, asyncio.Future[Result]] = {}

    def expect(self, request_id: str) -> asyncio.Future[Result]:
        """A future for ``request_id``'s final result; register it before sending the request."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        return future

    def forget(self, request_id: str) -> None:
        """Stop waiting (the caller timed out or went away)."""
        future = self._pending.pop(request_id, None)
        if future is not None and not future.done():
            future.cancel()

    @property
    def waiting(self) -> int:
        """Requests still waiting for their result."""
        return len(self._pending)

    def _handle(self, key: bytes | None, value: bytes | None) -> None:
        # Results are keyed by request id: skip other callers' results without decoding them.
        request_id = key.decode("utf-8", "replace") if key is not None else None
        if request_id is not None and request_id not in self._pending:
            return
        try:
            result = self.client.codec.decode_record(value or b"", self.result_type)
        except Exception as exc:
            log.warning("undecodable record on %s: %s", self.topic, exc)
            return
        if result.status is ResultStatus.PARTIAL:
            return  # streamed chunks; the caller gets the final result
        future = self._pending.pop(result.request_id, None)
        if future is not None and not future.done():
            future.set_result(result)

    async def stop(self) -> None:
        """Stop reading; waiting requests are cancelled."""
        await super().stop()
        for request_id in list(self._pending):
            self.forget(request_id)


class StatusBoard(_TopicFollower):
    """The latest ModelStatus per model and instance, from the compacted status topic (read whole)."""

    def __init__(self, client: AltlasClient, topic: str) -> None:
        super().__init__(client, topic, from_beginning=True)
        self.latest: dict[str, dict[str, ModelStatus]] = {}  # "id@version" -> instance -> status

    def _handle(self, key: bytes | None, value: bytes | None) -> None:
        if value is None:
            return  # a tombstone
        try:
            status = self.client.decode_status(value)
        except Exception as exc:
            log.warning("undecodable model status: %s", exc)
            return
        self.latest.setdefault(f"{status.model_id}@{status.model_version}", {})[status.instance_id] = status


class Gateway:
    """The Kafka side of the gateway: one producer, one result reader per modality, the status board."""

    def __init__(
        self, settings: Settings, *, timeout_s: float = 60.0, registry: ModelRegistry | None = None
    ) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.registry = registry if registry is not None else load_registry(settings)
        self.client: AltlasClient | None = None  # Kafka clients need the running loop: made in start()
        self.waiters: dict[Modality, ResultWaiter] = {}
        self.status: StatusBoard | None = None

    async def start(self) -> None:
        """Create missing topics (as altlas would), connect, and start reading results and status."""
        s = self.settings
        if s.topics.create:
            await ensure_topics(
                client_kwargs(s.kafka, client_suffix="gateway-admin"),
                topic_plan(s),
                partitions=s.topics.partitions,
                replication_factor=s.topics.replication_factor,
            )
        self.client = AltlasClient(client_kwargs(s.kafka, client_suffix="gateway"), build_codec(s), s.topics)
        await self.client.start()
        for m in s.modalities:
            self.waiters[m] = ResultWaiter(self.client, m, s.topics.results(m))
            await self.waiters[m].start()
        self.status = StatusBoard(self.client, s.topics.model_status)
        await self.status.start()

    async def stop(self) -> None:
        """Disconnect everything."""
        if self.status is not None:
            await self.status.stop()
        for waiter in self.waiters.values():
            await waiter.stop()
        if self.client is not None:
            await self.client.stop()

    async def infer(
        self,
        modality: Modality,
        task: str,
        payload: bytes | str,
        *,
        model: str = "",
        params: Mapping[str, ParamValue] | None = None,
        timeout_s: float | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[AnyRequest, Result | None]:
        """Publish one request and wait for its final result (None on timeout)."""
        if modality not in self.waiters:
            raise GatewayError(404, ErrorCode.UNKNOWN_TASK, f"modality {modality} is not served here")
        size = len(payload.encode() if isinstance(payload, str) else payload)
        if size > self.settings.limits.max_message_bytes:
            raise GatewayError(
                413,
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"payload of {size} bytes exceeds limits.max_message_bytes "
                f"({self.settings.limits.max_message_bytes})",
            )
        timeout = min(_MAX_TIMEOUT_S, timeout_s if timeout_s is not None else self.timeout_s)
        if timeout <= 0:
            raise GatewayError(400, ErrorCode.INVALID_PARAMS, "timeout_s must be positive")
        try:
            request = make_request(
                modality,
                task,
                payload,
                model=model,
                params=params,
                deadline=datetime.now(UTC) + timedelta(seconds=timeout),
                metadata={"gateway": "http", **(metadata or {})},
            )
        except ValidationError as exc:
            raise GatewayError(
                404, ErrorCode.UNKNOWN_TASK, f"{modality} has no task {task!r}: {_first_error(exc)}"
            ) from exc
        if content_type and modality != "text":
            request = request.model_copy(update={"content_type": content_type})
        waiter = self.waiters[modality]
        assert self.client is not None  # waiters exist only once started
        future = waiter.expect(request.request_id)
        try:
            await self.client.send(request, modality=modality)
            return request, await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return request, None
        except KafkaError as exc:  # the request was not published: the caller may retry
            raise GatewayError(503, "KAFKA_UNAVAILABLE", f"cannot publish the request: {exc}") from exc
        finally:
            waiter.forget(request.request_id)

    def models(self) -> dict[str, Any]:
        """The registry's models with each instance's latest reported state."""
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        defaults: dict[str, list[str]] = {}
        for task, ref in self.registry.defaults.items():
            defaults.setdefault(self.registry.get(ref).key, []).append(task)
        for spec in self.registry:
            seen.add(spec.key)
            out.append(
                {
                    "id": spec.id,
                    "version": spec.version,
                    "key": spec.key,
                    "task": spec.task,
                    "tasks": list(spec.tasks),
                    "backend": spec.backend,
                    "default_for": defaults.get(spec.key, []),
                    "metadata": _jsonable(dataclasses.asdict(spec.metadata)),
                    "status": self._status_of(spec.key),
                }
            )
        latest = self.status.latest if self.status is not None else {}
        for key in sorted(set(latest) - seen):  # reported by instances, not in our registry file
            model_id, _, version = key.partition("@")
            out.append({"id": model_id, "version": version, "key": key, "status": self._status_of(key)})
        return {"models": out, "defaults": dict(self.registry.defaults)}

    def _status_of(self, key: str) -> list[dict[str, Any]]:
        return [
            {
                "instance": s.instance_id,
                "state": s.state.value,
                "memory_bytes": s.memory_bytes,
                "load_ms": s.load_ms,
                "message": s.message,
                "updated_at": s.timestamp.isoformat() if s.timestamp else None,
            }
            for s in sorted(
                (self.status.latest.get(key, {}) if self.status is not None else {}).values(),
                key=lambda s: s.instance_id,
            )
        ]


class InferenceBody(BaseModel):
    """``POST /api/inference``: one request of any modality, as JSON."""

    task: str = Field("auto", description="A task (classify, generate...), or `<modality>.<task>`.")
    modality: Literal["auto", "text", "vision", "audio"] = "auto"
    model: str = Field("", description="Model id, id@version, route:NAME, or empty for the default.")
    params: dict[str, ParamValue] = Field(default_factory=dict)
    payload: str | None = Field(None, description="Text input (prompt, text to embed or speak...).")
    payload_base64: str | None = Field(None, description="Binary input (image, audio), base64.")
    timeout_s: float | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


def http_status(result: Result) -> int:
    """The HTTP status answering a final result."""
    if result.status is ResultStatus.OK:
        return 200
    if result.status is ResultStatus.EXPIRED:
        return 504
    code = result.error.code if result.error is not None else ErrorCode.INTERNAL
    return HTTP_STATUS.get(code, 500)


def parse_param(raw: str) -> ParamValue:
    """A query or form value as a param: JSON scalars and string lists where they parse, else the string."""
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    if value is None or isinstance(value, bool | int | float | str):
        scalar: ParamValue = value
        return scalar
    if isinstance(value, list):
        return [str(v) for v in value]
    return raw  # an object has no param form: keep the text


def to_json(value: Any) -> Any:
    """A dumped record as JSON data; bytes (audio, images) as standard base64, which any client decodes."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    return str(errors[0].get("msg", exc)) if errors else str(exc)


def _wants_audio(accept: str) -> bool:
    kinds = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    return any(k.startswith("audio/") for k in kinds)


def _error_response(status: int, code: str, message: str, request_id: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"status": "error", "error": {"code": code, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status)


def _answer(
    request: AnyRequest, result: Result | None, timeout_s: float, started: float, accept: str
) -> Response:
    if result is None:
        return _error_response(
            504,
            "GATEWAY_TIMEOUT",
            f"no result within {timeout_s:g}s (is altlas running?)",
            request.request_id,
        )
    headers = {
        "X-Request-Id": result.request_id,
        "X-Round-Trip-Ms": f"{(time.perf_counter() - started) * 1000:.1f}",
    }
    if result.model_id:
        headers["X-Model"] = f"{result.model_id}@{result.model_version}"
    output = getattr(result, "output", None)  # each modality's Result subclass narrows its own output
    if isinstance(output, Speech) and result.status is ResultStatus.OK and _wants_audio(accept):
        return Response(output.audio, media_type=f"audio/{output.format}", headers=headers)
    return JSONResponse(to_json(result.model_dump(exclude_none=True)), http_status(result), headers)


def _modality_and_task(body: InferenceBody, data: bytes | str) -> tuple[Modality, str]:
    task = body.task
    modality: str = body.modality
    if "." in task:  # "vision.classify"
        prefix, task = task.split(".", 1)
        if modality not in ("auto", prefix):
            raise GatewayError(400, ErrorCode.INVALID_PARAMS, f"task {body.task} is not a {modality} task")
        modality = prefix
    if modality == "auto":
        modality = modality_of(data) if isinstance(data, bytes) else "text"
    if modality not in ("text", "vision", "audio"):
        raise GatewayError(404, ErrorCode.UNKNOWN_TASK, f"unknown modality {modality!r}")
    return modality, task  # type: ignore[return-value]


def _payload_of(body: InferenceBody) -> bytes | str:
    if (body.payload is None) == (body.payload_base64 is None):
        raise GatewayError(400, ErrorCode.INVALID_PAYLOAD, "give exactly one of payload or payload_base64")
    if body.payload is not None:
        return body.payload
    try:
        return base64.b64decode(body.payload_base64 or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GatewayError(400, ErrorCode.INVALID_PAYLOAD, f"payload_base64 is not base64: {exc}") from exc


async def _upload(request: Request) -> tuple[bytes, dict[str, str], str | None]:
    """The payload, the non-file fields and the payload's content type of a multipart or raw-body call."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded"):
        form = await request.form()
        fields: dict[str, str] = {}
        data: bytes | None = None
        file_type: str | None = None
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if data is None:
                    data = await value.read()
                    file_type = value.content_type
            else:
                fields[name] = value
        if data is None and "text" in fields:  # e.g. tts from a form
            data = fields.pop("text").encode()
        if data is None:
            raise GatewayError(400, ErrorCode.INVALID_PAYLOAD, "the form has no file (and no text field)")
        return data, fields, file_type
    return await request.body(), {}, ctype.split(";", 1)[0].strip() or None


def create_app(settings: Settings, *, timeout_s: float = 60.0, gateway: Gateway | None = None) -> FastAPI:
    """The FastAPI application; it starts and stops its Gateway with the server."""
    gw = gateway if gateway is not None else Gateway(settings, timeout_s=timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(
        title="altlas gateway",
        description="The old REST endpoints, answered through Kafka by altlas.",
        lifespan=lifespan,
    )
    app.state.gateway = gw
    install_guard(app, settings)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return _error_response(exc.status, exc.code, exc.message)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "waiting": {m: w.waiting for m, w in gw.waiters.items()}}

    @app.get("/api/models")
    async def models() -> dict[str, Any]:
        """The registry and, where instances reported it, each model's state."""
        return gw.models()

    @app.post("/api/inference")
    async def inference(body: InferenceBody, request: Request) -> Response:
        """Any modality: JSON with a text payload or a base64 one."""
        started = time.perf_counter()
        data = _payload_of(body)
        modality, task = _modality_and_task(body, data)
        timeout = body.timeout_s if body.timeout_s is not None else gw.timeout_s
        req, result = await gw.infer(
            modality,
            task,
            data,
            model=body.model,
            params=body.params,
            timeout_s=timeout,
            content_type=sniff(data) if isinstance(data, bytes) else None,
            metadata=body.metadata,
        )
        return _answer(req, result, timeout, started, request.headers.get("accept", ""))

    async def upload_call(modality: Modality, task: str, request: Request) -> Response:
        started = time.perf_counter()
        data, fields, ctype = await _upload(request)
        query = dict(request.query_params)
        controls = {**{k: v for k, v in fields.items() if k in _CONTROL_FIELDS}, **query}
        params = {k: parse_param(v) for k, v in {**fields, **query}.items() if k not in _CONTROL_FIELDS}
        try:
            timeout = float(controls["timeout_s"]) if "timeout_s" in controls else gw.timeout_s
        except ValueError as exc:
            raise GatewayError(400, ErrorCode.INVALID_PARAMS, "timeout_s must be a number") from exc
        content_type = ctype if ctype and ctype.split("/", 1)[0] in ("image", "audio") else sniff(data)
        req, result = await gw.infer(
            modality,
            task,
            data,
            model=controls.get("model", ""),
            params=params,
            timeout_s=timeout,
            content_type=content_type,
        )
        return _answer(req, result, timeout, started, request.headers.get("accept", ""))

    @app.post("/api/vision/{task}")
    async def vision(task: str, request: Request) -> Response:
        """An image as a multipart file or the raw body; params in the query or form."""
        return await upload_call("vision", task, request)

    @app.post("/api/audio/{task}")
    async def audio(task: str, request: Request) -> Response:
        """Audio (or, for tts, text) as a multipart file or the raw body; params in the query or form."""
        return await upload_call("audio", task, request)

    return app
