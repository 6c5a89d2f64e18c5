"""Operators' view of dead letters: list them, and send chosen ones back to
the topic they came from (after fixing what made them fail: a setting, the
schema, or the message itself). Events are idempotent by id, so sending one
back twice still stores it once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from worker.dead_letter_records import request_bytes
from worker.deadletter import TOO_LARGE
from worker.settings import Settings


async def list_dead_letters(
    engine: AsyncEngine,
    group: str | None = None,
    topic: str | None = None,
    error_class: str | None = None,
    ids: Sequence[int] = (),
    limit: int = 100,
) -> list[Row[Any]]:
    c = dead_letters.c
    query = select(dead_letters).order_by(c.id).limit(limit)
    for column, value in ((c.group_id, group), (c.topic, topic), (c.error_class, error_class)):
        if value is not None:
            query = query.where(column == value)
    if ids:
        query = query.where(c.id.in_(ids))
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


def dead_letters_json(letters: list[Row[Any]]) -> str:
    """Dead letters as JSON; key and value shown as text (undecodable bytes
    replaced), the value cut at 1,000 characters."""
    rows = []
    for letter in letters:
        row = {str(name): value for name, value in letter._asdict().items()}
        for name in ("key", "value"):
            raw = row[name]
            row[name] = None if raw is None else raw.decode(errors="replace")[:1000]
        rows.append(row)
    return orjson.dumps(rows, default=str, option=orjson.OPT_INDENT_2).decode()


def oversized(
    letters: list[Row[Any]], value: bytes | None, max_message_bytes: int
) -> list[tuple[int, int]]:
    """(id, bytes) of each dead letter whose value (or `value`, if given) is
    larger than `max_message_bytes`: sent back, it would be dead-lettered
    again."""
    sizes = [(d.id, len(value if value is not None else d.value or b"")) for d in letters]
    return [(letter_id, size) for letter_id, size in sizes if size > max_message_bytes]


class SendBackFailed(Exception):
    """Kafka did not take a dead letter back; those before it were sent."""

    def __init__(self, letter: Row[Any], sent: int, error: KafkaError) -> None:
        self.too_large = isinstance(error, TOO_LARGE)
        super().__init__(
            f"{letter.topic}[{letter.partition}] did not take dead letter {letter.id}: "
            f"{error!r} ({sent} sent before it)"
        )


async def send_back(settings: Settings, letters: list[Row[Any]], value: bytes | None) -> int:
    """Produce each dead letter's key and value (or `value`, a fixed one) to
    its original topic and partition, in turn; returns how many were sent.
    Requests take messages up to `max_message_bytes`, as the workers do."""
    producer = AIOKafkaProducer(
        **settings.kafka_options(),
        acks="all",
        enable_idempotence=True,
        max_request_size=request_bytes(settings.max_message_bytes),
    )
    try:
        await producer.start()
        for sent, letter in enumerate(letters):
            try:
                await (
                    await producer.send(
                        letter.topic,
                        value if value is not None else letter.value,
                        key=letter.key,
                        partition=letter.partition,
                    )
                )
            except KafkaError as exc:
                raise SendBackFailed(letter, sent, exc) from exc
    finally:
        await producer.stop()
    return len(letters)
