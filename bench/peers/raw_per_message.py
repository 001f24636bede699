"""Raw aiokafka, one message at a time: the floor of a per-message consumer.

``async for`` over the consumer with auto-commit (aiokafka's default), one
``session.run`` per request, ``send()`` without waiting for the ack (the
producer batches behind the scenes; acks are awaited only at shutdown).
This is at-most-once on a crash: offsets may be committed before answers
are acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from handler import Handler


async def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--bootstrap", "--input", "--output", "--model", "--group", "--workload", "--schemas"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    handler = Handler(args.workload, args.model, args.schemas)
    consumer = AIOKafkaConsumer(
        args.input, bootstrap_servers=args.bootstrap, group_id=args.group, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", linger_ms=2, max_batch_size=1024 * 1024
    )
    await consumer.start()
    await producer.start()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        async for rec in consumer:
            ((key, value),) = handler.handle([rec.value])
            await producer.send(args.output, value, key=key)
    except asyncio.CancelledError:
        pass
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
