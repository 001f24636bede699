"""ONNX Runtime backend: any ``.onnx`` file, batched along its first dimension.

Inputs and outputs are per item (``{input_name: array}`` without the batch
axis) so pipelines never care whether a model has a dynamic batch dimension: a
dynamic one gets the whole batch stacked in one ``run``; a fixed one gets
chunks of its size, padded; items whose shapes differ are run in groups of
equal shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from altlas.models.errors import InvalidInputError, ModelLoadError
from altlas.models.registry import ModelSpec

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def preferred_providers(device: str = "auto") -> list[str]:
    """CUDA when the installed onnxruntime has it (and it is not ruled out), else CPU."""
    available = ort.get_available_providers()
    if device in ("auto", "cuda", "gpu") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device in ("cuda", "gpu"):
        log.warning("onnx: CUDA requested but not available; using CPU", extra={"available": available})
    return ["CPUExecutionProvider"]


class OnnxRuntime:
    """One ONNX model in one InferenceSession (thread-safe for ``run``)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.session: ort.InferenceSession | None = None
        self.metadata: dict[str, str] = {}
        self._inputs: list[Any] = []
        self._outputs: list[str] = []
        self._names: frozenset[str] = frozenset()
        self._checks: list[tuple[str, Any, int, tuple[tuple[int, int], ...], list[Any]]] = []
        self._batch_size: int | None = None  # None: dynamic
        self._max_batch = int(spec.params.get("max_batch", spec.metadata.max_batch))

    # ------------------------------------------------------------ lifecycle
    def load(self) -> None:
        """Create the session; failure is a ModelLoadError carrying the backend's reason."""
        if self.spec.path is None:
            raise ModelLoadError(f"{self.spec.key}: onnx models need a path")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(self.spec.params.get("intra_op_threads", 0))
        options.inter_op_num_threads = int(self.spec.params.get("inter_op_threads", 1))
        # Idle pool threads spin by default, burning the cores that decode the next batch;
        # in a server the microseconds a wake-up costs are worth less than those cores.
        spin = bool(self.spec.params.get("allow_spinning", False))
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.log_severity_level = 3
        providers = preferred_providers(str(self.spec.params.get("device", "auto")))
        try:
            self.session = ort.InferenceSession(str(self.spec.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"{self.spec.key}: cannot load {self.spec.path}: {exc}") from exc
        self._inputs = list(self.session.get_inputs())
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._names = frozenset(i.name for i in self._inputs)
        # Per input: (name, dtype, rank without the batch axis, the fixed dims to check, declared dims).
        self._checks = [
            (
                i.name,
                _DTYPES.get(i.type),
                len(i.shape) - 1,
                tuple((n, d) for n, d in enumerate(i.shape[1:]) if isinstance(d, int) and d > 0),
                i.shape[1:],
            )
            for i in self._inputs
        ]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        first = self._inputs[0].shape[0] if self._inputs and self._inputs[0].shape else None
        self._batch_size = first if isinstance(first, int) and first > 0 else None

    def unload(self) -> None:
        """Drop the session; onnxruntime frees its arena when it is collected."""
        self.session = None

    def memory_bytes(self) -> int:
        """Size of the weights on disk (with external data), a floor of what is resident."""
        path = self.spec.path
        if path is None or not path.exists():
            return 0
        total = path.stat().st_size
        for sibling in path.parent.glob(path.stem + "*.data"):
            total += sibling.stat().st_size
        return total

    @property
    def providers(self) -> list[str]:
        """Execution providers the session really uses."""
        return list(self.session.get_providers()) if self.session else []

    @property
    def input_names(self) -> list[str]:
        """Names of the model's inputs, in declaration order."""
        return [i.name for i in self._inputs]

    def input_shape(self, name: str | None = None) -> list[Any]:
        """Declared shape of an input (first input by default), batch axis included."""
        inp = next((i for i in self._inputs if name in (None, i.name)), None)
        return list(inp.shape) if inp is not None else []

    # ------------------------------------------------------------ inference
    def predict_batch(self, inputs: Sequence[Feed]) -> list[Any]:
        """Run per-item feeds; a malformed item gets an InvalidInputError in its slot."""
        if self.session is None:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        results: list[Any] = [None] * len(inputs)
        prepared: dict[int, Feed] = {}
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, feed in enumerate(inputs):
            try:
                prepared[i] = self._check(feed)
            except InvalidInputError as exc:
                results[i] = exc
                continue
            signature = tuple([(v.shape, v.dtype) for v in prepared[i].values()])  # in input order
            groups.setdefault(signature, []).append(i)
        step = self._batch_size or self._max_batch
        for indices in groups.values():
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                for i, out in zip(chunk, self._run([prepared[i] for i in chunk]), strict=True):
                    results[i] = out
        return results

    def _check(self, feed: Feed) -> Feed:
        """The feed with each input as an array of the model's dtype; raises on a name or shape mismatch.

        Runs for every item of every batch, so the model's declarations are read once at load.
        """
        if feed.keys() != self._names:
            raise InvalidInputError(f"{self.spec.key} takes inputs {sorted(self._names)}, got {sorted(feed)}")
        prepared = {}
        for name, dtype, rank, fixed, declared in self._checks:
            arr = feed[name]
            if type(arr) is not np.ndarray or (dtype is not None and arr.dtype != dtype):
                arr = np.asarray(arr, dtype=dtype)
            shape = arr.shape
            if len(shape) != rank or any(shape[n] != d for n, d in fixed):
                raise InvalidInputError(
                    f"{self.spec.key}: input {name} has shape {list(shape)}, model wants {declared}"
                )
            prepared[name] = arr
        return prepared

    def _run(self, feeds: list[Feed]) -> list[dict[str, np.ndarray]]:
        assert self.session is not None
        n = len(feeds)
        pad = (self._batch_size - n) if self._batch_size else 0
        batch = {name: np.stack([f[name] for f in feeds] + [feeds[-1][name]] * pad) for name in feeds[0]}
        names = self._outputs
        outputs = self.session.run(names, batch)
        return [{name: out[i] for name, out in zip(names, outputs, strict=True)} for i in range(n)]
