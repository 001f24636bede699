"""Small ONNX models built on disk with known, exact outputs.

They go through the same registry -> manager -> runtime path as a user's model
file; their arithmetic is simple enough that a test can compute the expected
output with numpy and compare values, not just shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from altlas.models.registry import ModelRegistry

#: Weights of the "mean colour" classifier: 3 channel means -> 4 classes.
MEAN_COLOR_W = np.array(
    [[4.0, -2.0, 0.5, 0.0], [-1.0, 3.0, 0.5, 0.0], [-1.0, -1.0, 0.5, 2.0]], dtype=np.float32
)
MEAN_COLOR_B = np.array([0.1, 0.0, -0.1, 0.2], dtype=np.float32)
MEAN_COLOR_LABELS = ["red", "green", "grey", "blue"]


def mean_color_classifier(path: Path, *, batch: int | str = "N", size: int = 4) -> Path:
    """NCHW image -> per-channel mean -> linear -> softmax, over 4 colour classes."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, size, size])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 4])
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["mean4d"], keepdims=1),
        helper.make_node("Flatten", ["mean4d"], ["mean"], axis=1),
        helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    inits = [
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(MEAN_COLOR_W, "W"),
        numpy_helper.from_array(MEAN_COLOR_B, "B"),
    ]
    graph = helper.make_graph(nodes, "mean_color", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {"labels": "\n".join(MEAN_COLOR_LABELS)})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def expected_mean_color(rgb: tuple[int, int, int]) -> np.ndarray:
    """What the model must output for a solid image of colour ``rgb`` (scale 1/255, no mean/std)."""
    mean = np.array(rgb, dtype=np.float32) / np.float32(255.0)
    logits = mean @ MEAN_COLOR_W + MEAN_COLOR_B
    e = np.exp(logits - logits.max())
    return np.asarray(e / e.sum(), dtype=np.float32)


def mean_color_variant(
    path: Path,
    *,
    permute: list[int] | None = None,
    slow_layers: int = 0,
    slow_width: int = 256,
    batch: int | str = "N",
) -> Path:
    """The mean-colour classifier with its weights' classes permuted and/or extra work that changes nothing.

    ``slow_layers`` adds input-dependent square matrix products whose result is
    multiplied by zero: real compute the runtime cannot fold away, so the model
    is measurably slower while answering exactly like the plain one.
    """
    w, b = MEAN_COLOR_W, MEAN_COLOR_B
    if permute is not None:
        w, b = w[:, permute], b[permute]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 4, 4])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, 4])
    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["mean4d"], keepdims=1),
        helper.make_node("Flatten", ["mean4d"], ["mean"], axis=1),
        helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits1"]),
    ]
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(w.astype(np.float32), "W"),
        numpy_helper.from_array(b.astype(np.float32), "B"),
    ]
    last = "logits1"
    if slow_layers:
        inits += [
            numpy_helper.from_array(np.ones((3, slow_width), dtype=np.float32), "widen"),
            # Orthogonal, so thousands of products neither overflow nor vanish (inf * 0 would be NaN).
            numpy_helper.from_array(
                np.linalg.qr(rng.normal(size=(slow_width, slow_width)))[0].astype(np.float32), "H"
            ),
            numpy_helper.from_array(np.ones((slow_width, 4), dtype=np.float32), "narrow"),
            numpy_helper.from_array(np.zeros((1,), dtype=np.float32), "zero"),
        ]
        nodes.append(helper.make_node("MatMul", ["mean", "widen"], ["h0"]))
        for i in range(slow_layers):
            nodes.append(helper.make_node("MatMul", [f"h{i}", "H"], [f"h{i + 1}"]))
        nodes += [
            helper.make_node("MatMul", [f"h{slow_layers}", "narrow"], ["busy"]),
            helper.make_node("Mul", ["busy", "zero"], ["nothing"]),
            helper.make_node("Add", ["logits1", "nothing"], ["logits2"]),
        ]
        last = "logits2"
    nodes.append(helper.make_node("Softmax", [last], ["probs"], axis=-1))
    model = helper.make_model(
        helper.make_graph(nodes, "mean_color_variant", [x], [y], inits),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    model.ir_version = 9
    # Labels are not permuted with the weights: a permuted model really answers differently.
    helper.set_model_props(model, {"labels": "\n".join(MEAN_COLOR_LABELS)})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def white_intolerant_classifier(path: Path) -> Path:
    """The mean-colour classifier, except that ONNX Runtime raises when a batch holds a pure-white image.

    A real runtime failure (an impossible Reshape, 97 rows of 48N values),
    triggered by input data, as a real model's kernel would fail on one
    pathological input and take its whole batch down with it.
    """
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4])
    nodes = [
        helper.make_node("ReduceMin", ["image", "item_axes"], ["darkest_each"], keepdims=0),
        helper.make_node("ReduceMax", ["darkest_each"], ["darkest"], keepdims=0),
        helper.make_node("Greater", ["darkest", "almost_one"], ["white"]),
        helper.make_node("Cast", ["white"], ["flag"], to=TensorProto.INT64),
        helper.make_node("Mul", ["flag", "ninety_six"], ["extra"]),
        helper.make_node("Add", ["extra", "one"], ["rows"]),
        helper.make_node("Unsqueeze", ["rows", "axis0"], ["rows1"]),
        helper.make_node("Concat", ["rows1", "minus_one"], ["shape"], axis=0),
        helper.make_node("Reshape", ["image", "shape"], ["folded"]),
        helper.make_node("Shape", ["image"], ["original"]),
        helper.make_node("Reshape", ["folded", "original"], ["unfolded"]),
        helper.make_node("ReduceMean", ["unfolded", "axes"], ["mean4d"], keepdims=1),
        helper.make_node("Flatten", ["mean4d"], ["mean"], axis=1),
        helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.999, dtype=np.float32), "almost_one"),
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "item_axes"),
        numpy_helper.from_array(np.array(96, dtype=np.int64), "ninety_six"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one"),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        numpy_helper.from_array(MEAN_COLOR_W, "W"),
        numpy_helper.from_array(MEAN_COLOR_B, "B"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "white_intolerant", [x], [y], inits),
        opset_imports=[helper.make_opsetid("", 18)],
    )
    model.ir_version = 9
    helper.set_model_props(model, {"labels": "\n".join(MEAN_COLOR_LABELS)})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def mean_color_registry(models_dir: Path, file: str = "mean_color.onnx", **params: object) -> ModelRegistry:
    """A registry of one model, ``c``: a mean-colour classifier of the session (``file``) on 4x4 images."""
    entry = {
        "id": "c",
        "task": "vision.classify",
        "backend": "onnx",
        "path": str(models_dir / file),
        "params": {"preprocess": {"resize": 4}, "labels_metadata_key": "labels", **params},
    }
    return ModelRegistry.from_dict({"models": [entry]})
