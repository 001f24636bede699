"""The set of Avro schemas altlas knows, by full name and by fingerprint.

Every top-level event schema ships as an ``.avsc`` file in this package and
references shared records (``altlas.events.ErrorInfo``...) by name, the
convention avro-tools and fastavro use to resolve types across files. Older
versions of a schema can be registered as extra writer schemas so that records
written by old producers keep decoding (schema resolution does the rest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import load_schema, to_parsing_canonical_form

from altlas.schemas.fingerprint import fingerprint_bytes

NAMESPACE = "altlas.events"

#: The event records that travel on topics (the others are parts of these).
EVENT_NAMES = (
    "TextRequest",
    "VisionRequest",
    "AudioRequest",
    "TextResult",
    "VisionResult",
    "AudioResult",
    "ModelStatus",
    "ModelCommand",
    "DeadLetter",
)


@dataclass(frozen=True)
class SchemaInfo:
    """One parsed schema with the identifiers other parties may know it by."""

    name: str
    parsed: Any
    canonical: str
    fingerprint: bytes

    @property
    def fingerprint_hex(self) -> str:
        """Fingerprint as 16 hex digits in wire (little-endian) order."""
        return self.fingerprint.hex()


def schema_dir() -> Path:
    """Folder holding the packaged ``.avsc`` files."""
    # Not importlib.resources: ``altlas`` is a namespace package, for which
    # ``files()`` returns a MultiplexedPath that fastavro cannot open.
    return Path(__file__).resolve().parent


def _info(name: str, parsed: Any) -> SchemaInfo:
    canonical = to_parsing_canonical_form(parsed)
    return SchemaInfo(name, parsed, canonical, fingerprint_bytes(canonical))


class SchemaCatalog:
    """Reader schemas by name and writer schemas by fingerprint."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = directory or schema_dir()
        self._by_name: dict[str, SchemaInfo] = {}
        self._by_fingerprint: dict[bytes, SchemaInfo] = {}
        for short in EVENT_NAMES:
            info = _info(self.full_name(short), load_schema(str(self._dir / f"{NAMESPACE}.{short}.avsc")))
            self._by_name[info.name] = info
            self._by_fingerprint[info.fingerprint] = info

    @staticmethod
    def full_name(name: str) -> str:
        """``TextRequest`` -> ``altlas.events.TextRequest``; full names pass through."""
        return name if "." in name else f"{NAMESPACE}.{name}"

    def get(self, name: str) -> SchemaInfo:
        """The current (reader) schema of an event record."""
        try:
            return self._by_name[self.full_name(name)]
        except KeyError:
            raise KeyError(f"no schema named {name!r}") from None

    def by_fingerprint(self, fingerprint: bytes) -> SchemaInfo | None:
        """The writer schema with this single-object fingerprint, if known."""
        return self._by_fingerprint.get(fingerprint)

    def register_writer(self, schema: str | dict[str, Any]) -> SchemaInfo:
        """Accept records written with another version of a schema (JSON text or dict)."""
        raw = json.loads(schema) if isinstance(schema, str) else schema
        parsed: Any = fastavro.parse_schema(raw, named_schemas={})
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise ValueError("a writer schema must be a record schema")
        info = _info(str(parsed["name"]), parsed)
        self._by_fingerprint.setdefault(info.fingerprint, info)
        return info

    def names(self) -> list[str]:
        """Full names of all event schemas."""
        return list(self._by_name)

    def bundled(self, name: str) -> dict[str, Any]:
        """A self-contained schema (referenced named types inlined at first use).

        This is what goes to a Confluent schema registry and what ``altlas
        schemas export`` writes for teams whose tools cannot resolve types
        across files; docs and defaults are kept, unlike the canonical form.
        """
        defined: set[str] = set()

        def inline(node: Any, namespace: str) -> Any:
            if isinstance(node, str):
                full = node if "." in node else f"{namespace}.{node}"
                path = self._dir / f"{full}.avsc"
                if full in defined or not path.exists():
                    return node
                return inline(json.loads(path.read_text()), namespace)
            if isinstance(node, list):
                return [inline(n, namespace) for n in node]
            if not isinstance(node, dict):
                return node
            node = dict(node)
            if node.get("type") in ("record", "enum", "fixed"):
                ns = node.get("namespace", namespace)
                defined.add(f"{ns}.{node['name']}" if "." not in node["name"] else node["name"])
                namespace = ns
            for key in ("type", "items", "values"):
                if key in node:
                    node[key] = inline(node[key], namespace)
            if "fields" in node:
                node["fields"] = [inline(f, namespace) for f in node["fields"]]
            return node

        return dict(inline(self.full_name(name), NAMESPACE))

    def source_path(self, name: str) -> Path:
        """The ``.avsc`` file a schema was loaded from."""
        return self._dir / f"{self.full_name(name)}.avsc"
