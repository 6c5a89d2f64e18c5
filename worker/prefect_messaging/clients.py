"""The Kafka clients a Prefect server process shares: one producer per event
loop (Prefect opens a publisher per request, far too often for a producer
each) and the topics already known to exist."""

from __future__ import annotations

import asyncio
import logging
import weakref

from aiokafka import AIOKafkaProducer

from worker.core.kafka_admin import create_topic
from worker.prefect_messaging.settings import MessagingSettings

log = logging.getLogger(__name__)

_producers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AIOKafkaProducer] = (
    weakref.WeakKeyDictionary()
)
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)
_topics: set[str] = set()
# Prefect refuses events over 1,500,000 bytes; the worker reads messages up to
# 1,572,864 (PERSISTER_MAX_MESSAGE_BYTES). Records that size, with headers, must
# fit the producer's requests and the topics the broker creates.
MAX_MESSAGE_BYTES = 1_572_864 + 64 * 1024


def _lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    if loop not in _locks:
        _locks[loop] = asyncio.Lock()
    return _locks[loop]


async def producer(settings: MessagingSettings) -> AIOKafkaProducer:
    """This loop's producer, started on first use. Idempotent with acks from
    every in-sync replica: a retried send is written once."""
    loop = asyncio.get_running_loop()
    async with _lock():
        if loop not in _producers:
            started = AIOKafkaProducer(
                **settings.kafka_options(),
                client_id="prefect-messaging",
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                max_request_size=MAX_MESSAGE_BYTES,
            )
            await started.start()
            _producers[loop] = started
        return _producers[loop]


async def close_producer() -> None:
    """Stop this loop's producer, flushing what it holds."""
    found = _producers.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.stop()


async def ensure_topic(settings: MessagingSettings, topic: str) -> None:
    """Create `topic` if it is missing (brokers should not create topics on
    first use): `prefect_topic_partitions` partitions, replicated as the
    worker's own topics are."""
    if topic in _topics:
        return
    async with _lock():
        if topic not in _topics:
            partitions = settings.prefect_topic_partitions
            configs = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
            if await create_topic(settings.kafka_options(), topic, partitions, configs):
                log.info("created Kafka topic %s", topic)
            _topics.add(topic)
