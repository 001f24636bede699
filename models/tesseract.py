"""Tesseract OCR backend (the Debian ``tesseract-ocr`` binary, driven by pytesseract).

Tesseract reads one image per process and is effectively single-threaded per
image, so a batch is spread over a bounded pool of worker threads, each
waiting on its own tesseract process (``params.workers``, default: the CPU
count). Tesseract's OpenMP threads are capped at one per process: with several
processes at once, letting each spawn a thread per core made a batch of 8 pages
5x slower on 2 cores.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from altlas.models.errors import InferenceError, InvalidInputError, ModelLoadError
from altlas.models.registry import ModelSpec

#: What tesseract's child processes get on top of our environment.
CHILD_ENV = {"OMP_THREAD_LIMIT": "1"}


class _ChildEnv(Mapping[str, str]):
    """os.environ as it is at each call, plus CHILD_ENV (never written back to os.environ,
    where OMP_THREAD_LIMIT would also cap torch and onnxruntime in this process)."""

    def _merged(self) -> dict[str, str]:
        return {**os.environ, **CHILD_ENV}

    def __getitem__(self, key: str) -> str:
        return self._merged()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._merged())

    def __len__(self) -> int:
        return len(self._merged())


def _pytesseract() -> Any:
    import pytesseract
    import pytesseract.pytesseract as impl

    # pytesseract passes its module-level ``environ`` to every tesseract process it starts and
    # has no per-call env argument: this is the one place to add the thread cap.
    if not isinstance(getattr(impl, "environ", None), _ChildEnv):
        impl.environ = _ChildEnv()
    return pytesseract


def _config(tessdata: Path | None) -> str:
    return f'--tessdata-dir "{tessdata}"' if tessdata is not None else ""


@functools.lru_cache(maxsize=8)
def installed_languages(tessdata: Path | None = None) -> frozenset[str]:
    """Language packs tesseract can load (``tesseract --list-langs``), cached per data dir."""
    try:
        langs = _pytesseract().get_languages(config=_config(tessdata))
    except Exception as exc:  # not installed, or an unreadable data dir
        raise ModelLoadError(f"tesseract is not usable: {exc}") from exc
    return frozenset(str(lang) for lang in langs)


@dataclass(frozen=True)
class OcrInput:
    """One image (a PIL image) and how to read it."""

    image: Any
    lang: str = "eng"
    psm: int = 3


@dataclass(frozen=True)
class OcrWordBox:
    """A recognised word, its box in image pixels and tesseract's confidence (0..100)."""

    text: str
    left: int
    top: int
    width: int
    height: int
    conf: float
    line: tuple[int, int, int, int]  # (page, block, paragraph, line) it belongs to


class TesseractRuntime:
    """Tesseract with one language set; ``path`` may name a tessdata folder (else the system's)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.tessdata: Path | None = spec.path
        self.timeout_s = float(spec.params.get("timeout_s", 60))
        self.workers = max(1, int(spec.params.get("workers", os.cpu_count() or 1)))
        self.extra_config = str(spec.params.get("config", ""))
        self.languages: frozenset[str] = frozenset()
        self.version = ""
        self._pool: ThreadPoolExecutor | None = None

    def load(self) -> None:
        """Check the binary and the language packs; start the worker pool."""
        if self.tessdata is not None and not self.tessdata.is_dir():
            raise ModelLoadError(f"{self.spec.key}: tessdata folder {self.tessdata} does not exist")
        try:
            pytesseract = _pytesseract()
            self.version = str(pytesseract.get_tesseract_version())
        except ImportError as exc:
            raise ModelLoadError(f"{self.spec.key}: pytesseract is not installed ({exc})") from exc
        except Exception as exc:  # TesseractNotFoundError and friends
            raise ModelLoadError(f"{self.spec.key}: tesseract is not usable: {exc}") from exc
        installed_languages.cache_clear()
        self.languages = installed_languages(self.tessdata)
        default = str(self.spec.params.get("lang", "eng"))
        missing = [lang for lang in default.split("+") if lang not in self.languages]
        if missing:
            raise ModelLoadError(
                f"{self.spec.key}: language pack(s) {missing} not installed (have {sorted(self.languages)})"
            )
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"tesseract-{self.spec.id}")

    def unload(self) -> None:
        """Stop the worker pool."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def memory_bytes(self) -> int:
        """Tesseract runs out of process; what it holds is per image and transient."""
        return 0

    def predict_batch(self, inputs: Sequence[OcrInput]) -> list[Any]:
        """Read every image, up to ``workers`` tesseract processes at once; a failure stays in its slot."""
        if self._pool is None:
            raise RuntimeError(f"{self.spec.key} is not loaded")
        return list(self._pool.map(self._read, inputs))

    def _read(self, item: OcrInput) -> list[OcrWordBox] | Exception:
        missing = [lang for lang in item.lang.split("+") if lang not in self.languages]
        if missing:
            return InvalidInputError(f"{self.spec.key}: language pack(s) {missing} not installed")
        pytesseract = _pytesseract()
        config = f"--psm {item.psm} {_config(self.tessdata)} {self.extra_config}".strip()
        try:
            data = pytesseract.image_to_data(
                item.image,
                lang=item.lang,
                config=config,
                output_type=pytesseract.Output.DICT,
                timeout=self.timeout_s,
            )
        except Exception as exc:  # TesseractError, or the RuntimeError of a timeout
            return InferenceError(f"{self.spec.key}: tesseract failed on this image: {exc}")
        return _words(data)


def _words(data: Mapping[str, list[Any]]) -> list[OcrWordBox]:
    """Word rows (level 5, non-blank) of image_to_data's table, in reading order."""
    words = []
    for i, level in enumerate(data["level"]):
        text = str(data["text"][i]).strip()
        if int(level) != 5 or not text:
            continue
        words.append(
            OcrWordBox(
                text=text,
                left=int(data["left"][i]),
                top=int(data["top"][i]),
                width=int(data["width"][i]),
                height=int(data["height"][i]),
                conf=float(data["conf"][i]),
                line=(
                    int(data["page_num"][i]),
                    int(data["block_num"][i]),
                    int(data["par_num"][i]),
                    int(data["line_num"][i]),
                ),
            )
        )
    return words
