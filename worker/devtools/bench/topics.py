"""Kafka side of the benchmark: loading the topic fast, pacing fresh events, end offsets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

# Whole batches go out with send_batch, so linger matters little; a batch
# stays well under the broker's default message.max.bytes (1 MiB).
LOAD_BATCH_BYTES = 512 * 1024
LOAD_LINGER_MS = 50
PACE_TICK_S = 0.05


def _producer(bootstrap_servers: str, **tuning: Any) -> AIOKafkaProducer:
    # acks=1 unless told: one broker, nothing to replicate to; the log append
    # is what counts.
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers, **({"acks": 1} | tuning))


async def load(
    bootstrap_servers: str, topic: str, partitions: int, values: Sequence[bytes]
) -> None:
    """Send `values` round-robin over the partitions in full batches, all partitions at once."""
    producer = _producer(
        bootstrap_servers, linger_ms=LOAD_LINGER_MS, max_batch_size=LOAD_BATCH_BYTES
    )
    await producer.start()
    try:
        await asyncio.gather(
            *(_load_partition(producer, topic, p, values[p::partitions]) for p in range(partitions))
        )
    finally:
        await producer.stop()


async def _load_partition(
    producer: AIOKafkaProducer, topic: str, partition: int, values: Sequence[bytes]
) -> None:
    delivered = []
    batch = producer.create_batch()
    for value in values:
        if batch.append(key=None, value=value, timestamp=None) is None:
            # send_batch waits while this partition's previous batch is in flight.
            delivered.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=None, value=value, timestamp=None)
    if batch.record_count():
        delivered.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*delivered)


async def send_paced(
    bootstrap_servers: str, topic: str, values: Sequence[bytes], rate: float, acks: Any = 1
) -> float:
    """Send `values` at `rate` per second in small bursts; returns the seconds it took.

    Each tick sends what the schedule says is due, so a slow tick is made up
    by the next one rather than lowering the rate."""
    # linger 0: a record's timestamp is taken at send, so lingering would
    # count towards the measured latency.
    producer = _producer(bootstrap_servers, linger_ms=0, acks=acks)
    await producer.start()
    started = time.monotonic()
    sent = 0
    try:
        while sent < len(values):
            due = min(len(values), int((time.monotonic() - started) * rate) + 1)
            futures = [await producer.send(topic, value) for value in values[sent:due]]
            await asyncio.gather(*futures)
            sent = due
            await asyncio.sleep(PACE_TICK_S)
    finally:
        await producer.stop()
    return time.monotonic() - started


async def end_offsets(bootstrap_servers: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        await consumer.stop()
    return {tp.partition: int(offset) for tp, offset in ends.items()}
