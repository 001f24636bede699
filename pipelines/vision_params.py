"""Request params shared by the vision tasks, read and bounded in one place.

A request param overrides the model's registry param of the same name, which
overrides the task default; every value is range-checked before the model
sees it, and a bad one is the caller's INVALID_PARAMS error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from altlas.models.registry import ModelSpec
from altlas.pipelines.base import bad_param as _bad
from altlas.pipelines.base import bounded_float, int_param
from altlas.schemas.types import ParamValue


def layered(params: Mapping[str, ParamValue], spec: ModelSpec, name: str, default: Any) -> Any:
    """The request's value, else the registry's, else ``default``."""
    if name in params and params[name] is not None:
        return params[name]
    return spec.params.get(name, default)


def float_param(
    params: Mapping[str, ParamValue], spec: ModelSpec, name: str, default: float, *, lo: float, hi: float
) -> float:
    """A bounded float (request, then registry, then default)."""
    return bounded_float(name, layered(params, spec, name, default), lo=lo, hi=hi)


def layered_int(
    params: Mapping[str, ParamValue], spec: ModelSpec, name: str, default: int, *, lo: int, hi: int
) -> int:
    """A bounded int (request, then registry, then default)."""
    return int_param({name: layered(params, spec, name, default)}, name, default, lo=lo, hi=hi)


def imgsz_param(params: Mapping[str, ParamValue], spec: ModelSpec) -> int | None:
    """The inference size of a YOLO model: a multiple of 32 (its largest stride), or the model's own."""
    if layered(params, spec, "imgsz", None) is None:
        return None
    size = layered_int(params, spec, "imgsz", 640, lo=32, hi=4096)
    if size % 32:
        raise _bad(f"param imgsz must be a multiple of 32, got {size}")
    return size


def class_filter(params: Mapping[str, ParamValue], spec: ModelSpec) -> tuple[str, ...] | None:
    """``classes`` as names or ids: a list of strings or one comma-separated string."""
    value = layered(params, spec, "classes", None)
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list) and all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        items = [str(v).strip() for v in value]
    else:
        raise _bad("param classes must be a list of class names or ids, or a comma-separated string")
    if not items:
        raise _bad("param classes is empty")
    return tuple(items)


def resolve_classes(wanted: tuple[str, ...] | None, names: Mapping[int, str]) -> list[int] | None:
    """Class ids for names or ids; an unknown one is an INVALID_PARAMS error."""
    if wanted is None:
        return None
    by_name = {name: cid for cid, name in names.items()}
    ids = []
    for item in wanted:
        if item in by_name:
            ids.append(by_name[item])
        elif item.lstrip("-").isdigit() and int(item) in names:
            ids.append(int(item))
        else:
            raise _bad(f"param classes: unknown class {item!r} (model has {len(names)} classes)")
    return sorted(set(ids))
