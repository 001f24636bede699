"""Measure the starter registry's metadata: accuracy, cost and latency_ms of every model.

Each starter model is loaded through the same registry -> runtime -> pipeline
path the orchestrator takes (no Kafka: the figures describe the model, not the
transport) and run on a small labelled check, one request at a time, three
times over, after one warm-up run (the answers of the first round are scored):

- ``latency_ms``: median wall milliseconds per request at batch 1 (prepare + run).
- ``cost``: median CPU milliseconds per request, this process's threads plus
  the programs it runs (Tesseract, espeak-ng). On a 2-core machine a request
  can cost more CPU than its latency.
- ``accuracy``: the mean score of the labelled checks, each 0..1; what a
  check scores is written next to it below (e.g. the share of the spoken words
  found in the transcript, or whether a drawn paragraph was found as a box). A
  handful of checks: a smoke-level figure to rank models, not a benchmark.

``python -m bench.starter`` prints the table; ``--write`` also stores the
figures in orchestration/starter_measured.yaml, which the starter registry
reads. Re-run it on the machine that will serve.
"""

from __future__ import annotations

import argparse
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests' builders of labelled material

from altlas.models.registry import ModelRegistry, ModelSpec  # noqa: E402
from altlas.models.runtime import ModelRuntime, create_runtime  # noqa: E402
from altlas.orchestration.app import starter  # noqa: E402
from altlas.pipelines import PipelineLimits, load_pipelines  # noqa: E402
from altlas.pipelines.masks import decode_rle  # noqa: E402

console = Console(stderr=True)
Case = tuple[bytes | str, dict[str, Any]]


@dataclass
class Check:
    """Labelled requests for one model and how to score the answers (one bool per case)."""

    cases: list[Case]
    score: Callable[[list[Any]], Sequence[float]]  # 0..1 per check (True counts 1)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _word_recall(said: Sequence[str]) -> Callable[[list[str]], list[float]]:
    """Per case, the share of the expected words found in what was read or heard."""

    def score(heard: list[str]) -> list[float]:
        out = []
        for s, h in zip(said, heard, strict=True):
            expected, got = _words(s), set(_words(h))
            out.append(sum(w in got for w in expected) / len(expected))
        return out

    return score


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Kafka carries every request to the model.",
    "Results are published back to the stream.",
]


def _vision_checks() -> dict[str, Check]:
    from altlas.orchestration.devtools.assets import PipAsset
    from tests.images import rotated_page
    from tests.vision_builders import document_page, encode, text_lines

    astronaut = PipAsset("scikit-image", "0.25.2", "skimage/data/astronaut.png").path().read_bytes()
    page, regions = document_page()
    page_png = encode(page)
    lines = [encode(text_lines([s])) for s in SENTENCES]

    def layout(outs: list[Any]) -> list[bool]:
        # every drawn paragraph, the title and the figure found as a box of its class (IoU > 0.5)
        wanted = [("text", r) for r in regions["text"]] + [("figure", regions["figure"][0])]
        wanted.append(("title", regions["title"][0]))
        boxes = outs[0].boxes
        return [
            any(b.class_name == c and _iou((b.x1, b.y1, b.x2, b.y2), r) > 0.5 for b in boxes)
            for c, r in wanted
        ]

    def text_map(outs: list[Any]) -> list[bool]:
        # each text line's box is marked across (nearly) its whole width
        (mask,) = [decode_rle(m.mask) for m in outs[0].class_masks]
        return [bool(mask[y1:y2, x1:x2].any(axis=0).mean() > 0.95) for x1, y1, x2, y2 in regions["lines"]]

    face_box = (177, 66, 272, 161)
    return {
        "orientation": Check(
            [(rotated_page(d), {"top_k": 1}) for d in (0, 90, 180, 270)],
            lambda outs: [o.labels[0].label == str(d) for o, d in zip(outs, (0, 90, 180, 270), strict=True)],
        ),
        "layout": Check([(page_png, {})], layout),
        "face": Check(  # the astronaut's face found (IoU > 0.5); nothing on a text page
            [(astronaut, {}), (page_png, {})],
            lambda outs: [
                any(_iou((b.x1, b.y1, b.x2, b.y2), face_box) > 0.5 for b in outs[0].boxes),
                not outs[1].boxes,
            ],
        ),
        "text-map": Check([(page_png, {})], text_map),
        "tesseract": Check(  # the words of the rendered line read back
            [(img, {}) for img in lines], lambda outs: _word_recall(SENTENCES)([o.text for o in outs])
        ),
    }


def _text_checks() -> dict[str, Check]:
    prompts = [
        ("The capital of France is", "paris"),
        ("The capital of Japan is", "tokyo"),
        ("The largest planet in the solar system is", "jupiter"),
    ]
    pairs = [  # (anchor, closer, farther): the paraphrase must be nearer than the unrelated sentence
        ("A cat sits on the mat.", "A kitten is resting on a rug.", "Interest rates rose again."),
        ("The stock market fell today.", "Shares dropped sharply this afternoon.", "I baked bread."),
        ("How do I reset my password?", "I forgot my login password.", "The river flooded the town."),
    ]
    texts = [t for triple in pairs for t in triple]

    def embed(outs: list[Any]) -> list[bool]:
        v = [np.asarray(o.vector) for o in outs]
        return [float(v[i] @ v[i + 1]) > float(v[i] @ v[i + 2]) for i in range(0, len(v), 3)]

    return {
        "smollm2": Check(  # greedy completion names the right answer
            [(p, {"temperature": 0.0, "max_tokens": 8}) for p, _ in prompts],
            lambda outs: [a in o.text.lower() for o, (_, a) in zip(outs, prompts, strict=True)],
        ),
        "minilm": Check([(t, {}) for t in texts], embed),
    }


def _audio_checks(whisper: Callable[[bytes], str]) -> dict[str, Check]:
    from tests.fixtures_audio import RATE, conversation, espeak, silence, wav_bytes

    speech = [wav_bytes(espeak(s)) for s in SENTENCES]
    padded = np.concatenate([silence(1.0), espeak(SENTENCES[0], trim=True), silence(1.0)])
    talk = conversation()

    def vad(outs: list[Any]) -> list[bool]:
        # speech found starting within 0.3 s of where it starts; nothing found in silence
        end = 1.0 + (padded.size - 2 * RATE) / RATE
        starts = [s.start for s in outs[0].segments if s.label == "speech"]
        ends = [s.end for s in outs[0].segments if s.label == "speech"]
        found = bool(starts) and abs(starts[0] - 1.0) < 0.3 and abs(ends[-1] - end) < 0.3
        return [found, not any(s.label == "speech" for s in outs[1].segments)]

    def tts(outs: list[Any]) -> list[float]:  # the words Whisper hears of those the voice was asked to say
        return _word_recall(SENTENCES)([whisper(o.audio) for o in outs])

    return {
        "whisper-tiny-en": Check(  # the spoken words found in the transcript
            [(w, {}) for w in speech], lambda outs: _word_recall(SENTENCES)([o.text for o in outs])
        ),
        "joe": Check([(s, {}) for s in SENTENCES], tts),
        "espeak": Check([(s, {}) for s in SENTENCES], tts),
        "vad": Check([(wav_bytes(padded), {}), (wav_bytes(silence(2.0)), {})], vad),
        "speakers": Check(  # the two voices of a four-turn talk told apart
            [(wav_bytes(talk.audio), {})], lambda outs: [outs[0].num_speakers == 2]
        ),
    }


def _cpu_s() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(spec: ModelSpec, runtime: ModelRuntime, check: Check, repeats: int = 3) -> dict[str, float]:
    """Run every case ``repeats`` times after a warm-up; the figures of the module docstring."""
    pipelines, _ = load_pipelines(PipelineLimits())
    pipeline = pipelines[spec.task]

    def once(payload: bytes | str, params: dict[str, Any]) -> Any:
        (out,) = pipeline.run(runtime, [pipeline.prepare(payload, params, spec)])
        if isinstance(out, Exception):
            raise out
        return out

    once(*check.cases[0])
    outs, walls, cpus = [], [], []
    for round_ in range(repeats):
        for payload, params in check.cases:
            wall, cpu = time.perf_counter(), _cpu_s()
            out = once(payload, params)
            walls.append(time.perf_counter() - wall)
            cpus.append(_cpu_s() - cpu)
            if round_ == 0:
                outs.append(out)
    right = [float(r) for r in check.score(outs)]
    return {
        "accuracy": round(sum(right) / len(right), 2),
        "cost": round(statistics.median(cpus) * 1000),
        "latency_ms": round(statistics.median(walls) * 1000),
        "checks": len(right),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--write", action="store_true", help="store the figures for the starter registry")
    parser.add_argument("--only", nargs="*", help="measure only these model ids")
    args = parser.parse_args()
    models, left_out = starter.usable()
    models = [m for m in models if not args.only or m.id in args.only]
    paths = starter.fetch(models)
    registry = ModelRegistry.from_dict(starter.document(models, paths))
    runtimes: dict[str, ModelRuntime] = {}

    def loaded(model_id: str) -> ModelRuntime:
        if model_id not in runtimes:
            runtimes[model_id] = create_runtime(registry.get(model_id))
            runtimes[model_id].load()
        return runtimes[model_id]

    whisper = starter.by_id("whisper-tiny-en")
    hearing = ModelRegistry.from_dict(starter.document([whisper], starter.fetch([whisper])))

    def hear(audio: bytes) -> str:
        """What Whisper hears in speech (for scoring the voices)."""
        spec = hearing.get(whisper.id)
        pipe = load_pipelines(PipelineLimits())[0][spec.task]
        if "hear" not in runtimes:
            runtimes["hear"] = create_runtime(spec)
            runtimes["hear"].load()
        (out,) = pipe.run(runtimes["hear"], [pipe.prepare(audio, {}, spec)])
        return str(getattr(out, "text", ""))

    checks = {**_vision_checks(), **_text_checks(), **_audio_checks(hear)}
    figures: dict[str, dict[str, float]] = {}
    table = Table("model", "task", "accuracy", "checks", "cost (CPU ms)", "latency ms")
    for model in models:
        console.print(f"measuring {model.id} ...")
        spec = registry.get(model.id)
        figures[model.id] = measure(spec, loaded(model.id), checks[model.id])
        f = figures[model.id]
        table.add_row(
            model.id,
            spec.task,
            f"{f['accuracy']:g}",
            f"{f['checks']:g}",
            f"{f['cost']:g}",
            f"{f['latency_ms']:g}",
        )
        runtimes.pop(model.id).unload()
    Console(width=120).print(table)
    for model_id, reason in left_out.items():
        console.print(f"not measured: {model_id} ({reason})")
    if args.write:
        old = yaml.safe_load(starter.MEASURED.read_text()) if starter.MEASURED.exists() else {}
        doc = {
            "measured_by": "python -m bench.starter --write",
            "measured_at": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {_cores()} cores, Python {platform.python_version()}",
            "models": {**(old or {}).get("models", {}), **figures},
        }
        header = "# The starter registry's measured figures; bench/starter.py says what each one means.\n"
        starter.MEASURED.write_text(header + yaml.safe_dump(doc, sort_keys=False))
        console.print(f"wrote {starter.MEASURED}")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
