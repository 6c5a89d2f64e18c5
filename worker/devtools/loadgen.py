"""Realistic event envelopes for demos, benchmarks and tests, and a producer
that sends them."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

# One of each kind of bad input the persister must dead-letter.
INVALID_MESSAGES: tuple[bytes | None, ...] = (
    None,  # tombstone
    b"\xff\xfe not utf-8",
    b'{"id": "not json',
    b'{"id": "not-a-uuid", "occurred": "2026-01-01T00:00:00Z", "event": "x",'
    b' "resource": {"prefect.resource.id": "r"}}',
    b'{"id": "8b2f6a4e-2a44-4b4c-9d53-64f1f3b0c001", "occurred": "2026-01-01T00:00:00Z",'
    b' "event": "x", "resource": {}}',
)


def make_event(
    rng: random.Random,
    related: int | None = None,
    occurred: datetime | None = None,
    payload_bytes: int = 300,
) -> dict[str, Any]:
    """A Prefect-style event with 0-3 related resources (or exactly `related`)."""
    n_related = rng.randint(0, 3) if related is None else related
    flow_run = uuid.UUID(int=rng.getrandbits(128))
    when = occurred or datetime.now(UTC) - timedelta(seconds=rng.randint(0, 3600))
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "occurred": when.isoformat(),
        "event": rng.choice(["prefect.flow-run.Running", "prefect.flow-run.Completed"]),
        "resource": {
            "prefect.resource.id": f"prefect.flow-run.{flow_run}",
            "prefect.resource.name": f"run-{rng.randint(0, 10**6)}",
        },
        "related": [
            {
                "prefect.resource.id": f"prefect.tag.t{i}-{rng.randint(0, 50)}",
                "prefect.resource.role": ["flow", "deployment", "tag"][i % 3],
            }
            for i in range(n_related)
        ],
        "payload": {"note": "x" * payload_bytes, "attempt": rng.randint(1, 5)},
    }


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def messages(
    count: int, seed: int = 0, invalid_every: int = 0, related: int | None = None
) -> Iterator[bytes | None]:
    """`count` encoded events; every `invalid_every`-th one is a bad message."""
    rng = random.Random(seed)
    for i in range(1, count + 1):
        if invalid_every and i % invalid_every == 0:
            yield INVALID_MESSAGES[(i // invalid_every) % len(INVALID_MESSAGES)]
        else:
            yield encode(make_event(rng, related))


async def produce(
    kafka_options: Mapping[str, Any],
    topic: str,
    values: Iterator[bytes | None],
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send every value (round-robin over partitions); returns how many."""
    producer = AIOKafkaProducer(**kafka_options, linger_ms=5, max_batch_size=256 * 1024, acks="all")
    await producer.start()
    sent = 0
    try:
        pending = []
        for value in values:
            # Kafka wants a key or a value; a tombstone is a keyed null value.
            key = b"tombstone" if value is None else None
            pending.append(await producer.send(topic, value, key=key))
            sent += 1
            if len(pending) >= 5000:
                await _settle(pending, on_sent)
        await _settle(pending, on_sent)
    finally:
        await producer.stop()
    return sent


async def _settle(pending: list[Any], on_sent: Callable[[int], None] | None) -> None:
    for future in pending:
        await future
    if on_sent is not None:
        on_sent(len(pending))
    pending.clear()
