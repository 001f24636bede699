"""all-MiniLM-L6-v2 as ONNX: the exporter now lives in the package (the starter registry serves it)."""

from altlas.orchestration.devtools.minilm import MINILM_WEIGHTS, export, minilm_dir

__all__ = ["MINILM_WEIGHTS", "export", "minilm_dir"]
