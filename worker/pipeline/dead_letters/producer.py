"""The dead-letter producer: how one is made, and how one is let go when it
is replaced (stuck, or with a gap in its sequence) so that nothing it held
reaches the topic after the topic was looked at."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from worker.core.settings import Settings
from worker.pipeline.dead_letters.records import request_bytes

logger = logging.getLogger(__name__)


def new_producer(settings: Settings, send_timeout_s: float) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **settings.kafka_options(),
        client_id=f"{settings.kafka_client_id()}-dlq",
        acks="all",
        enable_idempotence=True,
        max_request_size=request_bytes(settings.max_message_bytes),
        # Fail a send within seconds when the topic is missing, and retry it
        # later, rather than waiting the default 40 s.
        request_timeout_ms=int(send_timeout_s * 1000),
    )


async def started(producer: AIOKafkaProducer) -> AIOKafkaProducer:
    try:
        await producer.start()
    except BaseException:  # cancelled at a deadline too
        await producer.stop()
        raise
    return producer


async def retire(producer: AIOKafkaProducer, timeout_s: float) -> None:
    """Stop a replaced producer: what it still holds lands by `timeout_s`,
    or is dropped."""
    try:
        await asyncio.wait_for(producer.stop(), timeout_s)
    except TimeoutError:
        await abandon(producer, timeout_s)
    except KafkaError as exc:
        logger.debug("the replaced dead-letter producer stopped with %r", exc)


async def abandon(producer: AIOKafkaProducer, timeout_s: float) -> None:
    """Drop a producer whose stop() did not return: aiokafka's stop waits
    until every batch is acknowledged, which an idempotent producer retries
    without end. Its sender is cancelled and its connections closed so that
    nothing it held reaches the topic after the topic was looked at."""
    sender = producer._sender  # no public way to drop undelivered batches
    task = None if sender is None else sender.sender_task
    if task is not None:
        task.cancel()
    await producer.client.close()
    if task is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout_s)
