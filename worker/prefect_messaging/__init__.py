"""A Prefect messaging broker on Kafka.

Set in a Prefect server's environment::

    PREFECT_MESSAGING_BROKER=worker.prefect_messaging
    PREFECT_MESSAGING_CACHE=worker.prefect_messaging
    PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED=false
    PERSISTER_KAFKA_BOOTSTRAP_SERVERS=...

Prefect's topics become Kafka topics (`PERSISTER_PREFECT_TOPIC_PREFIX` +
name), its consumer groups Kafka consumer groups, a message's attributes a
record's headers and an event's id its key. The bytes published for an event
are what `persister run` reads: the worker replaces Prefect's event
persister.

Only a Prefect server imports this package; the worker never does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from worker.prefect_messaging.cache import Cache
from worker.prefect_messaging.consumer import Consumer
from worker.prefect_messaging.publisher import Publisher

__all__ = ["Cache", "Consumer", "Publisher", "break_topic", "ephemeral_subscription"]


@asynccontextmanager
async def ephemeral_subscription(topic: str) -> AsyncIterator[dict[str, Any]]:
    """A consumer without a group: every partition of `topic`, from now on.
    Nothing is left behind in Kafka when it ends (no group, no offsets)."""
    yield {"topic": topic, "since_ms": int(time.time() * 1000)}


@asynccontextmanager
async def break_topic() -> AsyncIterator[None]:
    """For Prefect's tests: publishing raises ValueError("oops")."""
    from unittest import mock  # only Prefect's tests need it

    failing = mock.AsyncMock(side_effect=ValueError("oops"))
    with mock.patch("aiokafka.AIOKafkaProducer.send", failing):
        yield
