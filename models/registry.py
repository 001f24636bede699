"""The model registry: which models exist, where their files are, how to run them.

A YAML file lists models (id, version, task, backend, path, params) plus the
metadata routing uses later (cost, accuracy, expected latency, max batch,
memory). Paths are resolved relative to the registry file, and ``${VAR}``
environment references are expanded, so one file works on a laptop and in a
container. Events only ever name a model id; they can never name a path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from altlas.models.errors import UnknownModelError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class ModelMetadata:
    """Facts about a model that strategies and the manager use, not the backend."""

    cost: float = 1.0
    accuracy: float | None = None
    latency_ms: float | None = None
    max_batch: int = 32
    concurrency: int | None = None  # batches at once on this model (else the global setting)
    load_ms: float | None = None  # declared reload cost (else measured) for cost-aware eviction
    timeout_s: float | None = None  # longest wait for this model's answer (else routing.attempt_timeout_s)
    memory_mb: float | None = None
    max_growth_mb: float | None = None  # resident memory a model may gain over its batches (else the setting)
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry."""

    id: str
    version: str
    task: str  # primary task, "<modality>.<task>", e.g. "vision.classify"
    backend: str
    path: Path | None
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    metadata: ModelMetadata = ModelMetadata()
    also: tuple[str, ...] = ()  # further tasks it serves (an LLM: text.generate and text.chat)

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task this model serves, the primary one first."""
        return (self.task, *self.also)

    def serves(self, task: str) -> bool:
        """Whether ``task`` ("<modality>.<task>") is one of this model's."""
        return task in self.tasks

    @cached_property
    def key(self) -> str:
        """``id@version``: unique within a registry (cached: looked up for every request)."""
        return f"{self.id}@{self.version}"

    @property
    def modality(self) -> str:
        """``vision`` for ``vision.classify``."""
        return self.task.split(".", 1)[0]

    def config_hash(self) -> str:
        """Short hash of everything that changes outputs (for lineage and caching); computed once."""
        cached: str | None = self.__dict__.get("_config_hash")
        if cached is not None:
            return cached
        blob = json.dumps(
            {
                "id": self.id,
                "version": self.version,
                "backend": self.backend,
                "path": str(self.path),
                "params": self.params,
            },
            sort_keys=True,
            default=str,
        )
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        object.__setattr__(self, "_config_hash", digest)  # frozen dataclass: cache via object
        return digest


@dataclass(frozen=True)
class Route:
    """A named choice of models for one task: ``model: "route:NAME"`` in a request."""

    name: str
    task: str
    strategy: str
    candidates: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


class ModelRegistry:
    """Lookup of model specs by id, version and task."""

    def __init__(
        self,
        specs: list[ModelSpec],
        defaults: dict[str, str] | None = None,
        routes: dict[str, Route] | None = None,
    ) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._latest: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.key in self._specs:
                raise ValueError(f"model {spec.key} is listed twice")
            self._specs[spec.key] = spec
            current = self._latest.get(spec.id)
            if current is None or _version_key(spec.version) > _version_key(current.version):
                self._latest[spec.id] = spec
        self.defaults = dict(defaults or {})
        for task, ref in self.defaults.items():
            self.get(ref)  # fail at start, not on the first request
            if not self.get(ref).serves(task):
                raise ValueError(f"default for {task} is {ref}, a {self.get(ref).task} model")
        self.routes = dict(routes or {})
        for route in self.routes.values():
            for ref in route.candidates:
                if not self.get(ref).serves(route.task):
                    raise ValueError(f"route {route.name}: {ref} does not serve {route.task}")

    @classmethod
    def from_file(cls, path: str | Path) -> ModelRegistry:
        """Load a registry YAML; relative model paths are relative to the file."""
        path = Path(path)
        doc = _expand(yaml.safe_load(path.read_text()) or {})
        return cls.from_dict(doc, base_dir=path.parent)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], base_dir: Path | None = None) -> ModelRegistry:
        """Build from an already-parsed document (``models:`` list, ``defaults:`` map)."""
        base = base_dir or Path.cwd()
        specs = []
        for entry in doc.get("models", []):
            missing = {"id", "backend"} - set(entry)
            tasks = entry.get("tasks") or ([entry["task"]] if "task" in entry else [])
            if not tasks:
                missing.add("task")
            if missing:
                raise ValueError(f"registry entry {entry!r} lacks {sorted(missing)}")
            raw_path = entry.get("path")
            model_path = None
            if raw_path:
                model_path = Path(raw_path).expanduser()
                if not model_path.is_absolute():
                    model_path = (base / model_path).resolve()
            meta = dict(entry.get("metadata", {}))
            if "labels" in meta:
                meta["labels"] = tuple(meta["labels"])
            specs.append(
                ModelSpec(
                    id=str(entry["id"]),
                    version=str(entry.get("version", "1")),
                    task=str(tasks[0]),
                    also=tuple(str(t) for t in tasks[1:]),
                    backend=str(entry["backend"]),
                    path=model_path,
                    params=dict(entry.get("params", {})),
                    metadata=ModelMetadata(**meta),
                )
            )
        routes = {
            str(name): Route(
                name=str(name),
                task=str(body["task"]),
                strategy=str(body.get("strategy", "fallback")),
                candidates=tuple(str(c) for c in body.get("candidates", ())),
                params=dict(body.get("params", {})),
            )
            for name, body in (doc.get("routes") or {}).items()
        }
        return cls(specs, {str(k): str(v) for k, v in (doc.get("defaults") or {}).items()}, routes)

    def route(self, name: str) -> Route:
        """A named route (the part after ``route:``)."""
        try:
            return self.routes[name]
        except KeyError:
            raise UnknownModelError(f"route {name!r} is not in the registry") from None

    def get(self, ref: str) -> ModelSpec:
        """Resolve ``id`` (latest version) or ``id@version``."""
        model_id, _, version = ref.partition("@")
        spec = self._specs.get(ref) if version else self._latest.get(model_id)
        if spec is None:
            raise UnknownModelError(f"model {ref!r} is not in the registry")
        return spec

    def default_for(self, task: str) -> ModelSpec | None:
        """The configured default model of a task, else the only model of that task."""
        if task in self.defaults:
            return self.get(self.defaults[task])
        candidates = self.for_task(task)
        return candidates[0] if len(candidates) == 1 else None

    def for_task(self, task: str) -> list[ModelSpec]:
        """Latest versions of all models that serve ``task``."""
        return [s for s in self._latest.values() if s.serves(task)]

    def __iter__(self) -> Any:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)


#: Weight formats that execute code when loaded (Python pickle inside).
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})


def check_pickle_paths(registry: ModelRegistry, trusted_dirs: list[Path]) -> None:
    """Refuse pickle-based weights outside the trusted model directories.

    Loading a pickle runs code from the file, so such weights may only come
    from directories the operator vouches for; other formats (ONNX, GGUF,
    safetensors, CTranslate2) are plain data and may live anywhere.
    """
    roots = [d.expanduser().resolve() for d in trusted_dirs]
    for spec in registry:
        for path in _weight_paths(spec):
            real = path.resolve()
            if any(real.is_relative_to(root) for root in roots):
                continue
            allowed = ", ".join(str(r) for r in roots) or "none"
            raise ValueError(
                f"model {spec.key}: pickle-based weights {real} are outside "
                f"the trusted model directories ({allowed})"
            )


def _weight_paths(spec: ModelSpec) -> list[Path]:
    """Pickle-format files a spec names: its path, and any param value that is such a file."""
    found = [spec.path] if spec.path is not None else []

    def walk(value: Any) -> None:
        if isinstance(value, str) and Path(value).suffix.lower() in PICKLE_SUFFIXES:
            found.append(Path(value).expanduser())
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(spec.params)
    return [p for p in found if p.suffix.lower() in PICKLE_SUFFIXES]


def _version_key(version: str) -> tuple[tuple[int, Any], ...]:
    """Order versions numerically where they are numbers ("10" > "9")."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-]", version))
