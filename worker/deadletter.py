"""The dead-letter topic, fed from the `dead_letters` table (an outbox).

Order: a dead letter is first committed to the table in the batch's
transaction; only then is it sent to the topic, and marked `published`. The
partition's owner does the sending, so there is one sender per dead letter.
A crash between sending and marking leaves rows unmarked that may already be on
the topic; the next owner, on assignment, reads the topic's recent records for
that partition and marks those instead of sending them twice.

Each dead letter goes to partition (source partition mod partition count) of
`<topic>.dlq` (the `dead_letter_topic` setting), keyed like the original,
with headers saying where it came from and why it was rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import Row, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from worker.kafka_admin import create_topic
from worker.settings import Settings

logger = logging.getLogger(__name__)

TP = tuple[str, int]
HEADER_PREFIX = "dlq."
# How far before the oldest unmarked row to look for it on the topic: the row
# is committed before it is sent, so the record is never older than the row
# by more than clock skew between database and broker.
SCAN_MARGIN = timedelta(minutes=5)
SEND_TIMEOUT_S = 10.0
RETRY_S = 5.0


def dead_letter_topic(template: str, source_topic: str) -> str | None:
    return template.replace("<topic>", source_topic) if template else None


def headers(row: Row[Any], group_id: str) -> list[tuple[str, bytes]]:
    timestamp = row.timestamp.isoformat() if row.timestamp else ""
    fields = {
        "group": group_id,
        "topic": row.topic,
        "partition": str(row.partition),
        "offset": str(row.offset),
        "timestamp": timestamp,
        "error_class": row.error_class,
        "error": row.error,
    }
    return [(HEADER_PREFIX + name, value.encode()) for name, value in fields.items()]


def origin(record_headers: Sequence[tuple[str, bytes]]) -> tuple[str, str, int, int] | None:
    """(group, topic, partition, offset) a dead-letter record came from."""
    found = {name: value.decode(errors="replace") for name, value in record_headers}
    try:
        return (
            found[HEADER_PREFIX + "group"],
            found[HEADER_PREFIX + "topic"],
            int(found[HEADER_PREFIX + "partition"]),
            int(found[HEADER_PREFIX + "offset"]),
        )
    except (KeyError, ValueError):
        return None


class DeadLetterPublisher:
    """Sends dead letters in the background, one sender task per source
    partition, so neither fetching nor writing ever waits on the topic."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.published = 0
        # An unexpected error in a sender, for the main loop to raise.
        self.crashed: BaseException | None = None
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, int] = {}
        self._senders: dict[TP, asyncio.Task[None]] = {}
        self._wanted: set[TP] = set()
        # Partitions whose leftovers from a previous owner were checked.
        self._checked: set[TP] = set()

    def request(self, tp: TP) -> None:
        """Send `tp`'s unsent dead letters soon (also what a previous owner
        left, the first time)."""
        if self._producer is None:
            return
        self._wanted.add(tp)
        if tp not in self._senders:
            task = asyncio.create_task(self._send_while_wanted(tp))
            self._senders[tp] = task
            task.add_done_callback(functools.partial(self._sender_done, tp))

    async def release(self, tp: TP, timeout_s: float) -> None:
        """The partition is being revoked: let its sender finish (so the next
        owner does not send the same records), or stop it at the deadline."""
        self._wanted.discard(tp)
        self._checked.discard(tp)
        task = self._senders.get(tp)
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            task.cancel()

    async def _send_while_wanted(self, tp: TP) -> None:
        while tp in self._wanted:
            self._wanted.discard(tp)
            if await self.publish_pending(tp, recovering=tp not in self._checked):
                self._checked.add(tp)
            else:
                self._wanted.add(tp)
                await asyncio.sleep(RETRY_S)

    def _sender_done(self, tp: TP, task: asyncio.Task[None]) -> None:
        if self._senders.get(tp) is task:
            del self._senders[tp]
        if not task.cancelled() and task.exception() is not None:
            self.crashed = task.exception()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.dead_letter_topic)

    async def start(self) -> None:
        if self.enabled:
            self._producer = AIOKafkaProducer(
                **self.settings.kafka_options(),
                client_id=f"{self.settings.client_id}-dlq",
                acks="all",
                enable_idempotence=True,
                # Fail a send within seconds when the topic is missing, and
                # retry it later, rather than waiting the default 40 s.
                request_timeout_ms=int(SEND_TIMEOUT_S * 1000),
            )
            await self._producer.start()

    async def stop(self) -> None:
        for task in list(self._senders.values()):
            task.cancel()
        await asyncio.gather(*self._senders.values(), return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()

    async def publish_pending(self, tp: TP, recovering: bool) -> bool:
        """Send this partition's unmarked dead letters to the topic, then mark
        them. With `recovering`, first skip those already on the topic.
        False on failure, which is logged and retried on the next call: the
        table already holds every dead letter, so nothing waits on the topic."""
        topic = dead_letter_topic(self.settings.dead_letter_topic, tp[0])
        if topic is None or self._producer is None:
            return True
        try:
            rows = await self._unmarked(tp)
            if not rows:
                return True
            partition = await self._partition_for(topic, tp[1])
            sent_before = await self._on_topic(topic, partition, rows) if recovering else set()
            futures = [
                await self._producer.send(
                    topic,
                    row.value,
                    key=row.key if row.key or row.value else f"{tp[0]}/{row.partition}".encode(),
                    partition=partition,
                    headers=headers(row, self.settings.group_id),
                )
                for row in rows
                if row.offset not in sent_before
            ]
            for future in futures:
                await future
            await self._mark([row.id for row in rows])
        except (KafkaError, SQLAlchemyError, OSError) as exc:
            logger.warning("%s[%d]: dead-letter topic not updated yet: %r", *tp, exc)
            return False
        self.published += len(futures)
        return True

    async def _unmarked(self, tp: TP) -> list[Row[Any]]:
        c = dead_letters.c
        query = (
            select(dead_letters)
            .where(
                c.group_id == self.settings.group_id,
                c.topic == tp[0],
                c.partition == tp[1],
                c.published.is_(None),
            )
            .order_by(c.offset)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def _mark(self, ids: list[int]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(dead_letters).where(dead_letters.c.id.in_(ids)).values(published=func.now())
            )

    async def _partition_for(self, topic: str, source_partition: int) -> int:
        if topic not in self._partitions:
            self._partitions[topic] = await self._ensure_topic(topic)
        return source_partition % self._partitions[topic]

    async def _ensure_topic(self, topic: str) -> int:
        """The topic's partition count, creating it (one partition) if missing."""
        assert self._producer is not None
        if await create_topic(self.settings.kafka_options(), topic, partitions=1):
            logger.info("created dead-letter topic %s", topic)
        # Waits until the producer's metadata knows the topic.
        return len(await self._producer.partitions_for(topic))

    async def _on_topic(self, topic: str, partition: int, rows: list[Row[Any]]) -> set[int]:
        """Offsets of `rows` whose dead-letter record is on the topic already."""
        since: datetime = min(row.recorded for row in rows) - SCAN_MARGIN
        group = self.settings.group_id
        wanted = {(group, row.topic, row.partition, row.offset) for row in rows}
        ktp = TopicPartition(topic, partition)
        consumer = AIOKafkaConsumer(**self.settings.kafka_options(), enable_auto_commit=False)
        await consumer.start()
        found: set[int] = set()
        try:
            consumer.assign([ktp])
            start = (await consumer.offsets_for_times({ktp: int(since.timestamp() * 1000)}))[ktp]
            end = (await consumer.end_offsets([ktp]))[ktp]
            if start is None:
                return found
            consumer.seek(ktp, start.offset)
            while await consumer.position(ktp) < end:
                batch = await consumer.getmany(ktp, timeout_ms=1000)
                for record in batch.get(ktp, []):
                    where = origin(record.headers)
                    if where is not None and where in wanted:
                        found.add(where[3])
        finally:
            await consumer.stop()
        return found
