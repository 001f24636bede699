"""FastStream (aiokafka underneath), as its documentation deploys a Kafka consumer.

Per message: ``@broker.subscriber(topic)`` receiving the raw bytes, one model
call, ``await broker.publish(result, topic, key=request_id)``; FastStream awaits
the broker's ack of each publish by default (no_confirm=False). Batch:
``@broker.subscriber(topic, batch=True, max_records=N)`` receiving a list, one
batched model call, one ``broker.publish_batch`` of ``KafkaPublishMessage``s
(per-message keys), with the producer's ``max_batch_size`` raised to 1 MiB so a
batch of N results fits one produce batch (the 16 KiB default drops batches of
1,000). Both use FastStream's default ack policy (ACK_FIRST: auto-commit).
"""

from __future__ import annotations

import argparse
import asyncio

from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaPublishMessage
from handler import Handler


def build(args: argparse.Namespace) -> FastStream:
    handler = Handler(args.workload, args.model, args.schemas)
    # Batch: a publish_batch of B results must fit one producer batch (aiokafka's default is 16 KiB).
    broker = (
        KafkaBroker(args.bootstrap, max_batch_size=1024 * 1024) if args.batch else KafkaBroker(args.bootstrap)
    )

    if args.batch:

        @broker.subscriber(
            args.input,
            group_id=args.group,
            auto_offset_reset="earliest",
            batch=True,
            max_records=args.batch,
        )
        async def answer_batch(values: list[bytes]) -> None:
            results = handler.handle(values)
            await broker.publish_batch(
                *(KafkaPublishMessage(value, key=key) for key, value in results), topic=args.output
            )

    else:

        @broker.subscriber(args.input, group_id=args.group, auto_offset_reset="earliest")
        async def answer(value: bytes) -> None:
            ((key, result),) = handler.handle([value])
            await broker.publish(result, args.output, key=key)

    return FastStream(broker)


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--bootstrap", "--input", "--output", "--model", "--group", "--workload", "--schemas"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--batch", type=int, default=0, help="batch subscriber of this many records")
    args = parser.parse_args()
    asyncio.run(build(args).run())


if __name__ == "__main__":
    main()
