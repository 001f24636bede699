"""Schema ids for Confluent framing: a static map or a schema registry.

Services using Confluent serializers put a 4-byte schema id in front of each
record. We resolve ids through a configured map (no service needed) or through
a registry speaking the Confluent REST API (Confluent, Apicurio's ccompat,
Redpanda, Karapace). Registry answers are cached forever: an id never changes
meaning, so one lookup per id per process is enough.

The id is the request's to write, so ids not seen before are looked up within a
budget (``LOOKUPS_PER_S`` on average, ``LOOKUP_BURST`` at once). Without it, a
batch of records with made-up ids cost one registry round trip each, in series,
ahead of every other record of the batch: 20,000 six-byte records held a
modality for over a minute and sent the shared registry 23,000 requests. Past
the budget an id is answered UNKNOWN_SCHEMA without asking; a real new schema
arriving during such a flood is dead-lettered, and can be replayed.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from altlas.schemas.catalog import SchemaCatalog, SchemaInfo
from altlas.schemas.errors import AltlasError, ErrorCode, SchemaRegistryUnavailableError, UnknownSchemaError

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
#: Registry lookups of ids not seen before, per second on average ...
LOOKUPS_PER_S = 20.0
#: ... and at once (a restart reading a backlog of every team's schemas).
LOOKUP_BURST = 200


class LookupBudget:
    """A token bucket: how many lookups of ids not seen before may be made now (not thread-safe alone)."""

    def __init__(self, per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s, self.burst, self._clock = per_s, burst, clock
        self._tokens, self._at = float(burst), clock()

    def take(self) -> bool:
        """Spend one lookup if there is one."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class SubjectStrategy(StrEnum):
    """How the registry subject for a record is named (Confluent's strategies)."""

    TOPIC = "topic"  # <topic>-value
    RECORD = "record"  # <full record name>
    TOPIC_RECORD = "topic_record"  # <topic>-<full record name>


def subject_for(strategy: SubjectStrategy, topic: str, record_name: str) -> str:
    """The subject under which ``record_name`` written to ``topic`` is registered."""
    if strategy is SubjectStrategy.RECORD or not topic:
        return record_name
    if strategy is SubjectStrategy.TOPIC_RECORD:
        return f"{topic}-{record_name}"
    return f"{topic}-value"


class SchemaIdMap:
    """Fixed ids configured by the operator: ``{id: record name or .avsc path}``."""

    def __init__(self, catalog: SchemaCatalog, mapping: dict[int, str]) -> None:
        self._by_id: dict[int, SchemaInfo] = {}
        self._by_name: dict[str, int] = {}
        for schema_id, ref in sorted(mapping.items()):
            if ref.endswith(".avsc"):
                info = catalog.register_writer(Path(ref).read_text())
            else:
                info = catalog.get(ref)
            self._by_id[int(schema_id)] = info
            # The highest id for a name is the one we write with.
            self._by_name[info.name] = int(schema_id)

    def schema_for_id(self, schema_id: int) -> SchemaInfo:
        """Writer schema configured for ``schema_id``."""
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"schema id {schema_id} is not in the configured map") from None

    def id_for(self, info: SchemaInfo, topic: str) -> int:
        """Configured id for writing ``info`` (the topic does not matter for a map)."""
        try:
            return self._by_name[info.name]
        except KeyError:
            raise UnknownSchemaError(f"no schema id configured for {info.name}") from None


class SchemaRegistryClient:
    """Minimal, thread-safe client of the Confluent schema-registry REST API."""

    #: Lookups do network I/O: callers on an event loop prefetch on a thread.
    remote = True

    def __init__(
        self,
        url: str,
        catalog: SchemaCatalog,
        *,
        strategy: SubjectStrategy = SubjectStrategy.TOPIC,
        timeout_s: float = 5.0,
        auth: tuple[str, str] | None = None,
        lookups: LookupBudget | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.catalog = catalog
        self.strategy = strategy
        self.timeout_s = timeout_s
        self._auth = auth
        self._lock = threading.Lock()
        self._by_id: dict[int, SchemaInfo] = {}
        self._unknown: dict[int, float] = {}  # id -> until when it is known not to exist
        self._ids: dict[tuple[str, bytes], int] = {}
        self._lookups = lookups or LookupBudget(LOOKUPS_PER_S, LOOKUP_BURST)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", _CONTENT_TYPE)
        if data is not None:
            req.add_header("Content-Type", _CONTENT_TYPE)
        if self._auth is not None:
            import base64

            token = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise SchemaRegistryUnavailableError(
                    f"schema registry {method} {path}: HTTP {exc.code}"
                ) from exc
            raise
        except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout
            raise SchemaRegistryUnavailableError(f"schema registry at {self.url} unreachable: {exc}") from exc

    def schema_for_id(self, schema_id: int) -> SchemaInfo:
        """Writer schema registered under ``schema_id`` (fetched once, then cached)."""
        if not 0 < schema_id < 2**31:  # ids are positive 32-bit ints: never ask the registry for others
            raise UnknownSchemaError(f"schema id {schema_id} is not a valid schema id")
        with self._lock:
            cached = self._by_id.get(schema_id)
            missing = self._unknown.get(schema_id, 0.0) > time.monotonic()
            # Only an id neither known nor known missing spends a lookup.
            allowed = cached is not None or missing or self._lookups.take()
        if cached is not None:
            return cached
        if missing:
            raise UnknownSchemaError(f"schema id {schema_id} is not in the registry (asked recently)")
        if not allowed:
            raise UnknownSchemaError(
                f"schema id {schema_id} was not looked up: more ids this instance has not seen were "
                f"asked for lately than the registry is asked about ({self._lookups.burst} at once, "
                f"{self._lookups.per_s:g} a second)"
            )
        try:
            return self._fetch(schema_id)
        except UnknownSchemaError:
            with self._lock:  # a random id per record must not cost a registry round trip per record
                if len(self._unknown) > 10_000:
                    self._unknown.clear()
                self._unknown[schema_id] = time.monotonic() + 60.0
            raise

    def _fetch(self, schema_id: int) -> SchemaInfo:
        try:
            answer = self._call("GET", f"/schemas/ids/{schema_id}")
        except urllib.error.HTTPError as exc:  # 404, and 401/403/422: no schema this record can be read with
            reason = "is not in the registry" if exc.code == 404 else f"was refused (HTTP {exc.code})"
            raise UnknownSchemaError(f"schema id {schema_id} {reason}") from exc
        except ValueError as exc:  # not JSON
            raise UnknownSchemaError(f"schema id {schema_id}: unreadable registry answer") from exc
        if not isinstance(answer, dict) or not isinstance(answer.get("schema"), str):
            raise UnknownSchemaError(f"schema id {schema_id}: the registry answer has no schema")
        if answer.get("schemaType", "AVRO") != "AVRO":
            raise UnknownSchemaError(f"schema id {schema_id} is {answer['schemaType']}, not Avro")
        try:
            info = self.catalog.register_writer(answer["schema"])
        except Exception as exc:  # unparsable, or not a record: no request can be read with it
            raise UnknownSchemaError(
                f"schema id {schema_id} is not a usable record schema: {type(exc).__name__}: {exc}"
            ) from exc
        with self._lock:
            self._by_id[schema_id] = info
        return info

    def id_for(self, info: SchemaInfo, topic: str) -> int:
        """Register (idempotently) the current schema under its subject and return the id."""
        subject = subject_for(self.strategy, topic, info.name)
        key = (subject, info.fingerprint)
        with self._lock:
            cached = self._ids.get(key)
        if cached is not None:
            return cached
        schema = json.dumps(self.catalog.bundled(info.name))
        try:
            answer = self._call("POST", f"/subjects/{subject}/versions", {"schema": schema})
        except urllib.error.HTTPError as exc:
            # 409: incompatible with the subject's history; 422: refused as invalid.
            raise AltlasError(
                f"registry refused {info.name} under {subject}: HTTP {exc.code}",
                code=ErrorCode.SCHEMA_MISMATCH,
            ) from exc
        schema_id = int(answer["id"])
        with self._lock:
            self._ids[key] = schema_id
            self._by_id.setdefault(schema_id, info)
        return schema_id
