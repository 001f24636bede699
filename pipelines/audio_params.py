"""Typed readers for the params of audio requests (a bad value is INVALID_PARAMS, never a crash)."""

from __future__ import annotations

from collections.abc import Mapping

from altlas.pipelines.base import bad_param as _bad
from altlas.pipelines.base import int_param
from altlas.schemas.types import ParamValue


def bool_param(params: Mapping[str, ParamValue], name: str, default: bool) -> bool:
    """A boolean; "true"/"false" strings are accepted."""
    value = params.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise _bad(f"param {name} must be a boolean, got {value!r}")


def str_param(
    params: Mapping[str, ParamValue],
    name: str,
    default: str | None,
    *,
    choices: tuple[str, ...] | None = None,
) -> str | None:
    """A short string, optionally one of ``choices``."""
    value = params.get(name, default)
    if value is None or value == "":
        return default
    if not isinstance(value, str) or len(value) > 200:
        raise _bad(f"param {name} must be a string of at most 200 characters")
    if choices is not None and value not in choices:
        raise _bad(f"param {name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def optional_int(params: Mapping[str, ParamValue], name: str, *, lo: int, hi: int) -> int | None:
    """An integer in [lo, hi], or None when absent."""
    if params.get(name) is None:
        return None
    return int_param(params, name, lo, lo=lo, hi=hi)
