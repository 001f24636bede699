"""OpenCV cascade backend: Haar/LBP cascade XML files (faces, eyes, plates...).

Classic trained detectors that need no deep-learning runtime, shipped with
OpenCV itself. A cascade has no calibrated confidence: the score is the
logistic of the final stage's margin (``levelWeights`` of ``detectMultiScale3``),
monotone in how surely the window passed, and in [0, 1] like every other
detector's. ``CascadeClassifier`` keeps per-image state while it scans, so
each concurrent lane runner gets its own instance.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from altlas.models.errors import InferenceError, ModelLoadError
from altlas.models.registry import ModelSpec


@dataclass(frozen=True)
class CascadeInput:
    """A grayscale (H, W) uint8 image and the scan settings for it."""

    image: np.ndarray
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: int = 0


@dataclass
class CascadeOutput:
    """Boxes (x1, y1, x2, y2) in image pixels and their scores."""

    boxes: np.ndarray
    scores: np.ndarray


class CascadeRuntime:
    """One cascade XML file."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._pool: queue.Queue[Any] = queue.Queue()
        self._copies = max(1, spec.metadata.concurrency or 1)
        self._loaded = False

    def load(self) -> None:
        """Parse the XML; OpenCV reports a bad file only as an empty classifier."""
        path = self.spec.path
        if path is None or not path.is_file():
            raise ModelLoadError(f"{self.spec.key}: cascade file {path} does not exist")
        try:
            import cv2
        except ImportError as exc:
            raise ModelLoadError(f"{self.spec.key}: OpenCV is not installed ({exc})") from exc
        if not hasattr(cv2, "CascadeClassifier"):
            raise ModelLoadError(f"{self.spec.key}: this OpenCV ({cv2.__version__}) has no CascadeClassifier")
        for _ in range(self._copies):
            try:
                cascade = cv2.CascadeClassifier(str(path))
            except cv2.error as exc:
                raise ModelLoadError(f"{self.spec.key}: cannot read {path}: {exc}") from exc
            if cascade.empty():
                raise ModelLoadError(f"{self.spec.key}: {path} is not a cascade classifier")
            self._pool.put(cascade)
        self._loaded = True

    def unload(self) -> None:
        """Drop the classifiers."""
        self._loaded = False
        while not self._pool.empty():
            self._pool.get_nowait()

    def memory_bytes(self) -> int:
        """A cascade is its XML, parsed: the file size is a fair estimate."""
        path = self.spec.path
        size = path.stat().st_size if path is not None and path.is_file() else 0
        return size * self._copies

    def predict_batch(self, inputs: Sequence[CascadeInput]) -> list[Any]:
        """Scan each image; a cascade has no batched form, so items run one after another."""
        if not self._loaded:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        cascade = self._pool.get()
        try:
            return [self._detect(cascade, item) for item in inputs]
        finally:
            self._pool.put(cascade)

    def _detect(self, cascade: Any, item: CascadeInput) -> CascadeOutput | Exception:
        import cv2

        try:
            rects, _levels, weights = cascade.detectMultiScale3(
                item.image,
                scaleFactor=item.scale_factor,
                minNeighbors=item.min_neighbors,
                minSize=(item.min_size, item.min_size),
                outputRejectLevels=True,
            )
        except cv2.error as exc:
            return InferenceError(f"{self.spec.key}: detectMultiScale failed: {exc}")
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
        margins = np.asarray(weights, np.float64).reshape(-1)
        scores = (1.0 / (1.0 + np.exp(-margins))).astype(np.float32)
        return CascadeOutput(boxes, scores)
