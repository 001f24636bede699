"""The baseline: a hand-written aiokafka loop doing the same work as altlas, nothing more.

getmany -> decode Avro -> decode PNG, resize, scale -> one batched session.run ->
encode Avro results -> send all -> await acks -> commit. No routing, no
isolation of bad input, no tracing, no ordering across batches: the floor
any framework's overhead is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import numpy as np
import onnxruntime as ort
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from PIL import Image

from altlas.schemas.catalog import SchemaCatalog

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from handler import WORKLOADS  # the preprocessing every peer shares


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--workload", default="tiny", choices=sorted(WORKLOADS))
    parser.add_argument("--max-records", type=int, default=512)
    args = parser.parse_args()

    catalog = SchemaCatalog()
    req_info, res_info = catalog.get("VisionRequest"), catalog.get("VisionResult")
    header = b"\xc3\x01" + res_info.fingerprint
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    preprocess, labels_key, model_id = WORKLOADS[args.workload]
    input_name = session.get_inputs()[0].name
    labels = session.get_modelmeta().custom_metadata_map[labels_key].splitlines()

    consumer = AIOKafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=args.max_records,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", linger_ms=2, max_batch_size=1024 * 1024
    )
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=args.max_records)
            records = [r for recs in batches.values() for r in recs]
            if not records:
                continue
            t0 = time.time()
            requests = [
                fastavro.schemaless_reader(io.BytesIO(r.value[10:]), req_info.parsed, None) for r in records
            ]
            pixels = []
            for req in requests:
                pixels.append(preprocess(Image.open(io.BytesIO(req["payload"])).convert("RGB")))
            t1 = time.perf_counter()
            probs = session.run(None, {input_name: np.stack(pixels)})[0]
            inference_ms = (time.perf_counter() - t1) * 1000
            futures = []
            for req, p in zip(requests, probs, strict=True):
                top = np.argsort(-p)[:5]
                result = {
                    "request_id": req["request_id"],
                    "task": "classify",
                    "status": "ok",
                    "model_id": model_id,
                    "model_version": "1",
                    "output": (
                        "altlas.events.Classification",
                        {
                            "labels": [
                                {"index": int(i), "label": labels[i], "score": float(p[i])} for i in top
                            ]
                        },
                    ),
                    "error": None,
                    "timings": {
                        "queued_ms": 0.0,
                        "inference_ms": inference_ms,
                        "batch_size": len(records),
                        "total_ms": (time.time() - t0) * 1000,
                    },
                    "created_at": datetime.now(UTC),
                }
                buf = io.BytesIO()
                buf.write(header)
                fastavro.schemaless_writer(buf, res_info.parsed, result)
                futures.append(
                    await producer.send(args.output, buf.getvalue(), key=req["request_id"].encode())
                )
            await asyncio.gather(*futures)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main())
