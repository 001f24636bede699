"""Text models built on disk for the tests and the LLM benchmark.

``tiny_llama_gguf`` writes a real llama-architecture GGUF (SentencePiece-style
vocabulary, a few small layers, random weights) with the ``gguf`` package, so
llama.cpp loads it through exactly the path a user's model takes. Control and
byte tokens can never be sampled, so a generation always runs to
``max_tokens``: exact-length tests need that, and a random model would
otherwise stop whenever it happened to pick EOS. (How: residual dimension 0 is
a constant that no layer writes to, so after the final norm it is always
positive, and the output rows of special tokens weigh it at -1000.)

``bag_of_words_classifier`` is an ONNX text classifier with exactly computable
logits over a real tokenizer's ids (see its docstring).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from altlas.models.llama import LlamaRuntime

#: Words of the tiny model's vocabulary (each is one token "▁word").
WORDS = (  # noqa: SIM905 - a sentence of words reads better than a 100-item literal
    "the a an of to in on and or but is are was were be been it this that these those "
    "cat dog bird fish horse cow sheep mouse lion tiger bear wolf fox owl frog "
    "red green blue yellow black white brown pink grey orange "
    "one two three four five six seven eight nine ten "
    "run walk jump swim fly sing read write sleep eat drink "
    "big small fast slow happy sad old new hot cold "
    "house tree river hill road city sea sky sun moon star rain snow wind "
    "paris france london rome capital answer hello world stream kafka"
).split()
CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()\"")

#: ChatML-like template with plain-text markers, so the tiny model can serve text.chat too.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </{{ m['role'] }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)

# SentencePiece token types (gguf.TokenType): normal, unknown, control, byte.
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types of the tiny SentencePiece vocabulary."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [_UNKNOWN, _CONTROL, _CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    pieces = ["▁", *CHARS, *(f"▁{c}" for c in CHARS), *(f"▁{w}" for w in WORDS)]
    seen: set[str] = set(tokens)
    for piece in pieces:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            types.append(_NORMAL)
    # SentencePiece prefers higher scores: whole words beat characters.
    scores = [0.0] * len(tokens)
    for i, tok in enumerate(tokens):
        if types[i] == _NORMAL:
            scores[i] = -1.0 / max(1, len(tok))
    return tokens, scores, types


def tiny_llama_gguf(
    path: Path,
    *,
    n_embd: int = 64,
    n_head: int = 4,
    n_layer: int = 2,
    n_ff: int = 128,
    context_length: int = 256,
    seed: int = 0,
    chat_template: str | None = TINY_CHAT_TEMPLATE,
) -> Path:
    """Write a random-weight llama GGUF that llama.cpp loads like any other model."""
    import gguf

    tokens, scores, types = tiny_vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("altlas-tiny-llama")
    writer.add_context_length(context_length)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    def tensor(name: str, *shape: int, scale: float = 0.2) -> None:
        # numpy shapes are ggml's reversed: a (n_out, n_in) array is ggml's [n_in, n_out].
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    embd = (rng.standard_normal((n_vocab, n_embd))).astype(np.float32)
    embd[:, 0] = 5.0
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    output = (rng.standard_normal((n_vocab, n_embd)) * 0.5).astype(np.float32)
    output[:, 0] = 0.0
    never = [i for i, t in enumerate(types) if t != _NORMAL]
    output[never] = 0.0
    output[never, 0] = -1000.0
    writer.add_tensor("output.weight", output)

    def block_tensor(name: str, *shape: int, keep_dim0: bool = False) -> None:
        weights = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if keep_dim0:
            weights[0, :] = 0.0  # nothing writes to residual dimension 0
        writer.add_tensor(name, weights)

    for b in range(n_layer):
        writer.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{b}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v"):
            block_tensor(f"blk.{b}.{name}.weight", n_embd, n_embd)
        block_tensor(f"blk.{b}.attn_output.weight", n_embd, n_embd, keep_dim0=True)
        block_tensor(f"blk.{b}.ffn_gate.weight", n_ff, n_embd)
        block_tensor(f"blk.{b}.ffn_up.weight", n_ff, n_embd)
        block_tensor(f"blk.{b}.ffn_down.weight", n_embd, n_ff, keep_dim0=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def bag_of_words_classifier(path: Path, tokenizer_json: Path, label_words: dict[str, list[str]]) -> Path:
    """An ONNX text classifier whose logits are exactly countable.

    Logit ``j`` is the number of tokens of the (attention-masked) input that are
    one of label ``j``'s words in the real tokenizer's vocabulary, so a test can
    compute every expected score by counting words. Inputs are the usual
    ``input_ids`` and ``attention_mask`` [batch, sequence]; the label names are
    in the ONNX metadata under ``labels``. Not trained: it exercises the
    tokenisation, padding, batching and top-k path with known answers.
    """
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    labels = list(label_words)
    table = np.zeros((tokenizer.get_vocab_size(), len(labels)), dtype=np.float32)
    for j, label in enumerate(labels):
        for word in label_words[label]:
            token = tokenizer.token_to_id(word)
            assert token is not None, f"{word!r} is not one token of this vocabulary"
            table[token, j] = 1.0
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["hits"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis_2"], ["mask3"]),
        helper.make_node("Mul", ["hits", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_1"], ["logits"], keepdims=0),
    ]
    ids = helper.make_tensor_type_proto(TensorProto.INT64, ["batch", "sequence"])
    graph = helper.make_graph(
        nodes,
        "bag-of-words",
        [helper.make_value_info("input_ids", ids), helper.make_value_info("attention_mask", ids)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(labels)])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis_2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"labels": "\n".join(labels)})
    path.write_bytes(model.SerializeToString())
    return path


def loaded_llama(path: Path, **params: Any) -> LlamaRuntime:
    """A loaded llama.cpp runtime for ``path`` (id ``m``, generate and chat) with these params."""
    from altlas.models.llama import LlamaRuntime
    from altlas.models.registry import ModelRegistry

    registry = ModelRegistry.from_dict(
        {
            "models": [
                {
                    "id": "m",
                    "tasks": ["text.generate", "text.chat"],
                    "backend": "llama.cpp",
                    "path": str(path),
                    "params": params,
                }
            ]
        }
    )
    runtime = LlamaRuntime(registry.get("m"))
    runtime.load()
    return runtime
