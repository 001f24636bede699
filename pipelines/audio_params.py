"""Typed readers for the params of audio requests (a bad value is INVALID_PARAMS, never a crash)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from altlas.pipelines.base import int_param
from altlas.schemas.errors import ErrorCode, InvalidRequestError
from altlas.schemas.types import ParamValue


def _bad(message: str) -> InvalidRequestError:
    return InvalidRequestError(message, code=ErrorCode.INVALID_PARAMS)


def float_param(
    params: Mapping[str, ParamValue], name: str, default: float, *, lo: float, hi: float
) -> float:
    """A number in [lo, hi]; strings holding a number are accepted (CLI ``-p key=value``)."""
    value = params.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _bad(f"param {name} must be a number")
    try:
        number = float(value)
    except ValueError:
        raise _bad(f"param {name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise _bad(f"param {name} must be in [{lo}, {hi}], got {value!r}")
    return number


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
