"""Read the key/value header of a GGUF file without loading its tensors.

llama.cpp only says "Failed to load model" when a file is not a model it can
read, and sizes the context from the model only after allocating it. Reading
the header first gives a clear error for files that are not GGUF at all, and
the trained context length before any memory is committed. The format is
small and stable (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md),
so this is a few lines rather than a dependency on the ``gguf`` package (whose
reader also parses every tensor and rejects quantisation types it predates).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import IO, Any

MAGIC = b"GGUF"
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_MAX_STRING = 64 * 1024 * 1024


class GgufFormatError(ValueError):
    """The file is not a GGUF file this reader understands."""


def _read(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise GgufFormatError("truncated GGUF header")
    return data


def _string(f: IO[bytes]) -> bytes:
    (n,) = struct.unpack("<Q", _read(f, 8))
    if n > _MAX_STRING:
        raise GgufFormatError(f"implausible string length {n} in GGUF header")
    return _read(f, n)


def _value(f: IO[bytes], kind: int, keep: bool) -> Any:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _string(f).decode("utf-8", errors="replace")
    if kind == _ARRAY:
        item_kind, count = struct.unpack("<IQ", _read(f, 12))
        if item_kind in _SCALARS and not keep:  # vocab scores etc.: skip without decoding
            f.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
            return None
        items = [_value(f, item_kind, keep) for _ in range(count)]
        return items if keep else None
    raise GgufFormatError(f"unknown GGUF value type {kind}")


def read_metadata(path: Path, *, arrays: bool = False) -> dict[str, Any]:
    """The header's key/value pairs (arrays are skipped unless ``arrays``)."""
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise GgufFormatError(f"{path} is not a GGUF file (no GGUF magic)")
        version, _n_tensors, n_kv = struct.unpack("<IQQ", _read(f, 20))
        if version < 2:
            raise GgufFormatError(f"GGUF version {version} is too old")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = _string(f).decode("utf-8", errors="replace")
            (kind,) = struct.unpack("<I", _read(f, 4))
            value = _value(f, kind, arrays)
            if value is not None:
                meta[key] = value
        return meta


def context_length(meta: dict[str, Any]) -> int | None:
    """The context length the model was trained with, when the header says."""
    arch = meta.get("general.architecture")
    value = meta.get(f"{arch}.context_length")
    return int(value) if isinstance(value, int) and value > 0 else None
