"""Operators' view of dead letters: list them newest first, count them by
error class and topic, mark them resolved, purge them, and send chosen ones
back to the topic they came from (after fixing what made them fail: a
setting, the schema, or the message itself). Events are idempotent by id,
so sending one back twice still stores it once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy import ColumnElement, Row, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from worker.core.settings import Settings
from worker.pipeline.dead_letters import TOO_LARGE, request_bytes


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command is about: every given criterion applies.
    `resolved` None takes resolved and unresolved ones alike."""

    group: str | None = None
    topic: str | None = None
    error_class: str | None = None
    ids: Sequence[int] = ()
    older_than: timedelta | None = None
    resolved: bool | None = False

    def where(self) -> list[ColumnElement[bool]]:
        c = dead_letters.c
        found: list[ColumnElement[bool]] = [
            column == value
            for column, value in (
                (c.group_id, self.group),
                (c.topic, self.topic),
                (c.error_class, self.error_class),
            )
            if value is not None
        ]
        if self.ids:
            found.append(c.id.in_(self.ids))
        if self.older_than is not None:
            found.append(c.recorded < datetime.now(UTC) - self.older_than)
        if self.resolved is not None:
            found.append(c.resolved.is_not(None) if self.resolved else c.resolved.is_(None))
        return found


async def list_dead_letters(
    engine: AsyncEngine, selection: Selection, limit: int = 100, before_id: int | None = None
) -> list[Row[Any]]:
    """Newest first; with `before_id`, those older than that one."""
    c = dead_letters.c
    query = select(dead_letters).where(*selection.where()).order_by(c.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(c.id < before_id)
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def count_dead_letters(engine: AsyncEngine, selection: Selection) -> int:
    query = select(func.count()).select_from(dead_letters).where(*selection.where())
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


@dataclass(frozen=True)
class Stat:
    error_class: str
    topic: str
    unresolved: int
    resolved: int


async def dead_letter_stats(engine: AsyncEngine, selection: Selection) -> list[Stat]:
    """Counts by error class and topic, the largest first."""
    c = dead_letters.c
    unresolved = func.count().filter(c.resolved.is_(None))
    query = (
        select(c.error_class, c.topic, unresolved, func.count(c.resolved))
        .where(*selection.where())
        .group_by(c.error_class, c.topic)
        .order_by(func.count().desc(), c.error_class, c.topic)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [Stat(r[0], r[1], int(r[2]), int(r[3])) for r in rows]


async def resolve(engine: AsyncEngine, selection: Selection) -> int:
    """Mark the selected unresolved dead letters resolved; how many."""
    query = (
        update(dead_letters)
        .where(*replace(selection, resolved=False).where())
        .values(resolved=func.now())
    )
    async with engine.begin() as conn:
        return int((await conn.execute(query)).rowcount)


async def purge(engine: AsyncEngine, selection: Selection) -> int:
    """Delete the selected dead letters; how many."""
    async with engine.begin() as conn:
        return int((await conn.execute(delete(dead_letters).where(*selection.where()))).rowcount)


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
