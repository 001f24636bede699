"""The configuration reference, generated from the settings models themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from altlas.orchestration.app.settings import Settings


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        if getattr(info.default_factory, "__name__", "<lambda>") != "<lambda>":
            return "(computed)"  # e.g. <hostname>-<pid>: the value here would be this machine's
        try:
            value: Any = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
        if isinstance(value, BaseModel):
            return ""
    else:
        value = info.default
    if value is None:
        return "unset"
    text = str(value).replace(str(Path.home()), "~")  # the reference must not show this machine's home
    return f"`{text}`".replace("|", "\\|")


def _rows(model: type[BaseModel], env: str, path: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _rows(annotation, f"{env}{name.upper()}__", f"{path}{name}.")
            continue
        type_name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        type_name = type_name.replace("|", "\\|")  # a bare | would split the markdown table cell
        rows.append(
            (
                f"{path}{name}",
                f"{env}{name.upper()}",
                _default(info),
                f"{type_name}. {info.description or ''}",
            )
        )
    return rows


def settings_reference() -> str:
    """A markdown table of every setting: key, environment variable, default, meaning."""
    lines = ["| setting | environment variable | default | type and meaning |", "|---|---|---|---|"]
    for key, env, default, doc in _rows(Settings, "ALTLAS_", ""):
        lines.append(f"| `{key}` | `{env}` | {default} | {doc.strip()} |")
    return "\n".join(lines)
