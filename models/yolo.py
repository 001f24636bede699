"""Ultralytics backend: YOLO detection, segmentation and classification models.

Serves any file ``ultralytics.YOLO`` opens (``.pt`` of the YOLOv5u/8/11
families, an ``.onnx`` it exported, other export formats), strictly offline:
ultralytics otherwise resolves DNS at import, downloads weights a path does not
name, pip-installs missing packages and fetches fonts. Every ``predict`` call
is given the same letterbox (square, ``rect=False``), so an image's result
never depends on which other images shared its batch.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from altlas.models.errors import InferenceError, ModelLoadError
from altlas.models.registry import ModelSpec

#: Environment ultralytics reads once, at import: no network probe, no pip, quiet.
OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", "YOLO_VERBOSE": "False"}

#: Registry task -> the ultralytics model tasks that can serve it (a segmenter also detects).
TASKS = {
    "vision.detect": ("detect", "segment"),
    "vision.segment": ("segment",),
    "vision.classify": ("classify",),
}

_import_lock = threading.Lock()


def config_dir() -> Path:
    """Where ultralytics keeps settings.json: under our cache, never the user's ~/.config."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "altlas" / "ultralytics"


def import_ultralytics() -> Any:
    """Import ultralytics with its network features off (the env must be set before the import)."""
    with _import_lock:
        os.environ.update(OFFLINE_ENV)
        os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir()))
        from PIL import Image

        pil_open = Image.open
        import ultralytics
        from ultralytics.utils import SETTINGS, patches

        # ultralytics replaces PIL's Image.open process-wide with a wrapper that, on any
        # unidentifiable image, pip-installs and imports a HEIF plugin: hostile input would then
        # reach the network or crash the decoder with ImportError. Our decoding needs Pillow's own.
        if Image.open is getattr(patches, "image_open", None):
            Image.open = getattr(patches, "_image_open", pil_open)
        if SETTINGS.get("sync", False):
            SETTINGS.update(sync=False)  # no analytics events, even if a network appears later
        return ultralytics


@dataclass(frozen=True)
class YoloInput:
    """One image for ``predict``: HWC uint8 in BGR order (ultralytics' numpy convention)."""

    image: np.ndarray
    options: tuple[tuple[str, Any], ...] = ()  # predict kwargs; items with equal options share a call


@dataclass
class YoloOutput:
    """One image's result as plain arrays, in original-image pixels."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # x1 y1 x2 y2
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    masks: np.ndarray | None = None  # (n, H, W) bool, segmentation models only
    probs: np.ndarray | None = None  # (classes,), classification models only


class UltralyticsRuntime:
    """One YOLO model; ``metadata.concurrency`` copies, since a predictor is not thread-safe."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.names: dict[int, str] = {}
        self.model_task = ""
        # YOLO's training sizes: 224 for classifiers, 640 for the rest (a trained .pt knows its own).
        self.imgsz = int(spec.params.get("imgsz", 224 if spec.task == "vision.classify" else 640))
        self.device = "cpu"
        self._pool: queue.Queue[Any] = queue.Queue()
        self._copies = max(1, spec.metadata.concurrency or 1)
        self._memory = 0

    # ------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Open the weights (offline), check the task, warm the predictor up."""
        path = self.spec.path
        if path is None or not path.exists():
            # YOLO("yolov8n.pt") would download a missing file: refuse before ultralytics sees it.
            raise ModelLoadError(f"{self.spec.key}: model file {path} does not exist")
        try:
            ultralytics = import_ultralytics()
        except ImportError as exc:
            raise ModelLoadError(f"{self.spec.key}: ultralytics is not installed ({exc})") from exc
        import torch

        threads = self.spec.params.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        self.device = self._device(str(self.spec.params.get("device", "auto")), torch)
        wanted = TASKS.get(self.spec.task, ())
        hint = str(self.spec.params.get("task", wanted[0] if wanted else "detect"))
        models = []
        try:
            for _ in range(self._copies):
                models.append(ultralytics.YOLO(str(path), task=hint))
        except Exception as exc:  # ultralytics raises many types for a bad file
            raise ModelLoadError(f"{self.spec.key}: cannot load {path}: {exc}") from exc
        first = models[0]
        self.model_task = str(first.task)
        if wanted and self.model_task not in wanted:
            raise ModelLoadError(
                f"{self.spec.key}: {path.name} is a {self.model_task} model; {self.spec.task} needs "
                f"{' or '.join(wanted)}"
            )
        self.names = {int(k): str(v) for k, v in dict(first.names).items()}
        overrides = getattr(first, "overrides", {}) or {}
        if "imgsz" not in self.spec.params and isinstance(overrides.get("imgsz"), int):
            self.imgsz = int(overrides["imgsz"])
        self._memory = self._estimate_memory(first, path)
        for model in models:
            self._pool.put(model)
        if self.spec.params.get("warmup", True):
            self.predict_batch([YoloInput(np.zeros((64, 64, 3), np.uint8))])

    def unload(self) -> None:
        """Drop every copy."""
        self.names = {}
        while not self._pool.empty():
            self._pool.get_nowait()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def memory_bytes(self) -> int:
        """Parameter bytes of a torch model times its copies; file size for exported formats."""
        return self._memory * self._copies

    # ------------------------------------------------------------ inference
    def predict_batch(self, inputs: Sequence[YoloInput]) -> list[Any]:
        """One ``predict`` per group of items with equal options (normally the whole batch)."""
        groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for i, item in enumerate(inputs):
            groups.setdefault(item.options, []).append(i)
        results: list[Any] = [None] * len(inputs)
        with self._model() as model:
            for options, indices in groups.items():
                # A static-batch export is split and padded by ultralytics' own backend.
                outs = self._predict(model, [inputs[i].image for i in indices], dict(options))
                for i, out in zip(indices, outs, strict=True):
                    results[i] = out
        return results

    def _predict(self, model: Any, images: list[np.ndarray], options: dict[str, Any]) -> list[YoloOutput]:
        kwargs: dict[str, Any] = {"imgsz": self.imgsz, **options}
        kwargs.update(verbose=False, save=False, rect=False, device=self.device, stream=False)
        if self.model_task == "segment":
            kwargs["retina_masks"] = True  # masks at the original image size
        try:
            raw = model.predict(images, **kwargs)
        except Exception as exc:
            raise InferenceError(f"{self.spec.key}: predict failed: {exc}") from exc
        return [self._convert(r) for r in raw]

    @staticmethod
    def _convert(result: Any) -> YoloOutput:
        out = YoloOutput()
        if result.boxes is not None:
            data = result.boxes.data.detach().cpu().numpy()
            out.boxes = np.asarray(data[:, :4], np.float32)
            out.scores = np.asarray(data[:, 4], np.float32)
            out.class_ids = data[:, 5].astype(np.int64)
        if result.masks is not None:
            out.masks = result.masks.data.detach().cpu().numpy() > 0.5
        if result.probs is not None:
            out.probs = np.asarray(result.probs.data.detach().cpu().numpy(), np.float32)
        return out

    # ------------------------------------------------------------ helpers
    @contextmanager
    def _model(self) -> Iterator[Any]:
        if self._pool.empty() and not self.names:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        model = self._pool.get()
        try:
            yield model
        finally:
            self._pool.put(model)

    @staticmethod
    def _device(wanted: str, torch: Any) -> str:
        if wanted in ("auto", "cuda", "gpu"):
            return "cuda:0" if torch.cuda.is_available() else "cpu"
        return wanted

    @staticmethod
    def _estimate_memory(model: Any, path: Path) -> int:
        inner = getattr(model, "model", None)
        params = getattr(inner, "parameters", None)
        if callable(params):
            return int(sum(p.numel() * p.element_size() for p in params()))
        return path.stat().st_size if path.is_file() else 0
