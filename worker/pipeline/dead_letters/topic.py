"""The dead-letter topic as Kafka has it: created if missing, how many
partitions and how large a record it takes, which dead letters it holds
already."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError
from sqlalchemy import Row

from worker.core.kafka_admin import create_topic, topic_config
from worker.core.settings import Settings
from worker.pipeline.dead_letters.records import origin, request_bytes

logger = logging.getLogger(__name__)

# How far before the oldest unmarked row to look for it on the topic: the row
# is committed before it is sent, so the record is never older than the row
# by more than clock skew between database and broker.
SCAN_MARGIN = timedelta(minutes=5)
# A scan that cannot read to the end by then fails, and is tried again.
SCAN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Target:
    """A dead-letter topic as the publisher needs it."""

    partitions: int
    # The largest record it takes: the producer's request limit, or the
    # topic's `max.message.bytes` if smaller.
    limit: int


async def prepare(settings: Settings, producer: AIOKafkaProducer, topic: str) -> Target:
    """Create the topic if missing (one partition, a `max.message.bytes`
    that takes every dead letter whole), and learn what it takes."""
    limit = request_bytes(settings.max_message_bytes)
    options = settings.kafka_options()
    if await create_topic(options, topic, partitions=1, configs={"max.message.bytes": str(limit)}):
        logger.info("created dead-letter topic %s (max.message.bytes %d)", topic, limit)
    # Waits until the producer's metadata knows the topic.
    partitions = len(await producer.partitions_for(topic))
    try:
        configured = await topic_config(options, topic, "max.message.bytes")
    except KafkaError as exc:
        # E.g. not allowed to read topic configs: a record that does not fit
        # is then refused by the broker, and goes reduced after that.
        logger.info("cannot read %s's max.message.bytes (%r)", topic, exc)
        configured = None
    if configured is not None:
        limit = min(limit, int(configured))
    return Target(partitions, limit)


async def already_sent(
    settings: Settings,
    topic: str,
    partition: int,
    rows: list[Row[Any]],
    back_to: datetime | None = None,
) -> set[int]:
    """Offsets of `rows` whose dead-letter record is on the topic already.
    The scan starts shortly before the oldest row was recorded, or before
    `back_to` if earlier: a row written again after the database lost it is
    recorded anew, after its first record went to the topic."""
    since: datetime = min([row.recorded for row in rows] + ([back_to] if back_to else []))
    since -= SCAN_MARGIN
    wanted = {(settings.group_id, row.topic, row.partition, row.offset) for row in rows}
    ktp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        **settings.kafka_options(),
        enable_auto_commit=False,
        max_partition_fetch_bytes=request_bytes(settings.max_message_bytes),
    )
    await consumer.start()
    found: set[int] = set()
    try:
        consumer.assign([ktp])
        start = (await consumer.offsets_for_times({ktp: int(since.timestamp() * 1000)}))[ktp]
        end = (await consumer.end_offsets([ktp]))[ktp]
        if start is None:
            return found
        consumer.seek(ktp, start.offset)
        deadline = asyncio.get_running_loop().time() + SCAN_TIMEOUT_S
        while await consumer.position(ktp) < end:
            if asyncio.get_running_loop().time() > deadline:
                raise KafkaTimeoutError(f"{topic}[{partition}] not read to its end")
            batch = await consumer.getmany(ktp, timeout_ms=1000)
            for record in batch.get(ktp, []):
                where = origin(record.headers)
                if where is not None and where in wanted:
                    found.add(where[3])
    finally:
        await consumer.stop()
    return found
