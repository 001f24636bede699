"""Hypothesis strategies that generate valid datums for any Avro schema."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: Settings for tests drawing whole event records: results nest (ensemble members are results,
#: outputs hold lists of records), so some draws are large and slow by design; hypothesis's
#: data_too_large health check once failed a clean-clone CI run on TextResult.
RECORD_SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "double": st.floats(allow_nan=False, allow_infinity=False),
    "bytes": st.binary(max_size=64),
    "string": st.text(max_size=24),
}
_MILLIS = st.integers(0, 4_102_444_800_000).map(lambda ms: _EPOCH + timedelta(milliseconds=ms))


def datums(schema: Any, names: dict[str, Any] | None = None, namespace: str = "") -> st.SearchStrategy[Any]:
    """Datums of ``schema`` (a fastavro-parsed or raw JSON schema)."""
    names = {} if names is None else names
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema]
        full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
        return st.deferred(lambda: datums(names[full] if full in names else names[schema], names, namespace))
    if isinstance(schema, list):
        branches = []
        for branch in schema:
            strategy = datums(branch, names, namespace)
            name = _record_name(branch, namespace)
            # Name record branches explicitly, as altlas does when writing unions.
            branches.append(strategy.map(lambda d, n=name: (n, d)) if name else strategy)
        return st.one_of(branches)
    kind = schema["type"]
    if kind == "long" and schema.get("logicalType") == "timestamp-millis":
        return _MILLIS
    if isinstance(kind, (list, dict)) or (kind in _PRIMITIVES and len(schema) == 1):
        return datums(kind, names, namespace)
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    if kind in ("record", "enum", "fixed"):
        ns = schema.get("namespace", namespace)
        full = schema["name"] if "." in schema["name"] else f"{ns}.{schema['name']}"
        names[full] = schema
        namespace = ns
    if kind == "record":
        fields = {f["name"]: datums(f["type"], names, namespace) for f in schema["fields"]}
        return st.fixed_dictionaries(fields)
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(datums(schema["items"], names, namespace), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), datums(schema["values"], names, namespace), max_size=3)
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    raise ValueError(f"unsupported schema {schema!r}")


def _record_name(branch: Any, namespace: str) -> str | None:
    if isinstance(branch, dict) and branch.get("type") == "record":
        ns = branch.get("namespace", namespace)
        return branch["name"] if "." in branch["name"] else f"{ns}.{branch['name']}"
    if isinstance(branch, str) and branch not in _PRIMITIVES:
        return branch if "." in branch else f"{namespace}.{branch}"
    return None
