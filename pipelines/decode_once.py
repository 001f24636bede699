"""One decode of a payload for every model of a plan.

An ensemble runs the same payload through several models, each with its own
preprocessing (sizes, normalisation) but the same container decode (PNG to
pixels, FLAC to samples), which is most of the cost. Inside ``decoded_once()``
on one thread, the image and audio decoders keep what they decoded, by the
payload object and the limits, and hand the same result (or raise the same
error) to every later caller; outside it they decode every time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
_local = threading.local()


@contextmanager
def decoded_once() -> Iterator[None]:
    """Decodes within the block are shared by payload (on this thread)."""
    outer = getattr(_local, "memo", None)
    _local.memo = {} if outer is None else outer
    try:
        yield
    finally:
        _local.memo = outer


def memoized(kind: str, data: bytes, limits: tuple[Any, ...], decode: Callable[[], T]) -> T:
    """``decode()``, or its earlier result (or error) for the same payload object inside ``decoded_once``."""
    memo: dict[tuple[Any, ...], Any] | None = getattr(_local, "memo", None)
    if memo is None:
        return decode()
    key = (kind, id(data), len(data), limits)
    if key not in memo:
        try:
            memo[key] = (True, decode())
        except Exception as exc:
            memo[key] = (False, exc)
    ok, value = memo[key]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]
