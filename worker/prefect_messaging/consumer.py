"""Prefect's consumer on Kafka: a Prefect consumer group is a Kafka consumer
group; a consumer without a group (an ephemeral subscription) reads every
partition from the moment it was subscribed, and commits nothing.

Order for each record: the handler runs, then (after the poll's records are
all handled) the group commits past it. A handler that fails is retried in
place, `PERSISTER_PREFECT_MAX_RETRIES` times with backoff, then the record
goes to the group's dead-letter topic and the partition moves on. Delivery
is at least once: a member that stops before committing leaves its records
to the next owner of their partitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prefect.server.utilities.messaging import Consumer as PrefectConsumer
from prefect.server.utilities.messaging import MessageHandler, StopConsumer

from worker.core.retry import backoff_s
from worker.prefect_messaging import clients
from worker.prefect_messaging.messages import KafkaMessage, from_record
from worker.prefect_messaging.settings import (
    PERSISTER_GROUP,
    MessagingSettings,
    messaging_settings,
)

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 1000
DEFAULT_BATCH = 100
RETRY_CAP_S = 30.0
ASSIGN_TIMEOUT_S = 30.0
ERROR_HEADER_BYTES = 1000


class Consumer(PrefectConsumer):
    def __init__(
        self,
        topic: str,
        name: str | None = None,
        group: str | None = None,
        read_batch_size: int | None = None,
        since_ms: int | None = None,
        settings: MessagingSettings | None = None,
        **_unused: Any,
    ) -> None:
        if group == PERSISTER_GROUP:
            refused = (
                "Prefect's event persister is on: with this broker `persister run` persists "
                "the events; set PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED=false"
            )
            # Logged too: Prefect keeps a failed service's error until it stops.
            log.error(refused)
            raise ValueError(refused)
        self.settings = settings or messaging_settings()
        self.topic = topic
        self.kafka_topic = self.settings.kafka_topic(topic)
        self.name = name or topic
        self.group = group
        self.since_ms = since_ms
        # Prefect asks for 1 at a time; what a poll returns is handled in
        # order and committed once, so a larger batch only saves commits.
        self.batch = max(read_batch_size or 1, DEFAULT_BATCH)
        self._kafka: AIOKafkaConsumer | None = None
        # Handled records whose commit failed: committed with the next poll's,
        # or after an empty poll, while this member still owns them.
        self._uncommitted: dict[TopicPartition, int] = {}

    async def run(self, handler: MessageHandler) -> None:
        """Consume until StopConsumer or cancellation. Kafka out of reach
        (at start, or later) is waited out, never the end of the service."""
        attempt = 0
        while True:
            try:
                kafka = await self._open()
            except (KafkaError, OSError, TimeoutError) as exc:
                attempt += 1
                if attempt == 1:
                    log.warning("%s: cannot consume %s yet: %r", self.name, self.kafka_topic, exc)
                await self._pause(attempt)
                continue
            if attempt:
                log.warning("%s: consuming %s again", self.name, self.kafka_topic)
            self._kafka = kafka
            try:
                await self._consume(kafka, handler)
                return
            finally:
                self._kafka = None
                await kafka.stop()

    async def _open(self) -> AIOKafkaConsumer:
        await clients.ensure_topic(self.settings, self.kafka_topic)
        kafka = AIOKafkaConsumer(
            self.kafka_topic,
            **self.settings.kafka_options(),
            group_id=self.group,
            client_id=self.name,
            enable_auto_commit=False,
            auto_offset_reset=self.settings.prefect_new_group_offset if self.group else "latest",
            max_partition_fetch_bytes=clients.MAX_MESSAGE_BYTES,
        )
        try:
            await kafka.start()
            if self.group is None and self.since_ms is not None:
                await self._seek_to_subscription(kafka, self.since_ms)
        except BaseException:
            await kafka.stop()
            raise
        return kafka

    async def cleanup(self) -> None:
        kafka, self._kafka = self._kafka, None
        if kafka is not None:
            await kafka.stop()

    async def _consume(self, kafka: AIOKafkaConsumer, handler: MessageHandler) -> None:
        failing = 0
        while True:
            try:
                polled = await kafka.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=self.batch)
            except KafkaError as exc:
                failing += 1
                log.warning("%s: reading %s failed: %s", self.name, self.kafka_topic, exc)
                await self._pause(failing)
                continue
            failing = 0
            done: dict[TopicPartition, int] = {}
            try:
                for tp, records in polled.items():
                    for record in records:
                        await self._deliver(handler, self._message(record))
                        done[tp] = record.offset + 1
            except StopConsumer as stop:
                if stop.ack:
                    done[tp] = record.offset + 1
                await self._commit(kafka, done)
                return
            await self._commit(kafka, done)

    def _message(self, record: ConsumerRecord[bytes, bytes]) -> KafkaMessage:
        return from_record(
            record.key,
            record.value,
            list(record.headers),
            (record.partition, record.offset),
            is_event=self.topic == "events",
        )

    async def _deliver(self, handler: MessageHandler, message: KafkaMessage) -> None:
        """Run the handler until it succeeds, or as a dead letter once its
        retries are spent. StopConsumer passes through."""
        attempt = 0
        while True:
            try:
                await handler(message)
                return
            except StopConsumer:
                raise
            except Exception as exc:
                attempt += 1
                if attempt > self.settings.prefect_max_retries:
                    await self._dead_letter(message, exc)
                    return
                log.warning(
                    "%s: handling %s[%d]@%d failed (attempt %d of %d): %r",
                    self.name,
                    self.kafka_topic,
                    message.partition,
                    message.offset,
                    attempt,
                    self.settings.prefect_max_retries + 1,
                    exc,
                )
                await self._pause(attempt)

    async def _dead_letter(self, message: KafkaMessage, exc: Exception) -> None:
        where = f"{self.kafka_topic}[{message.partition}]@{message.offset}"
        if self.group is None:
            log.error("%s: dropped %s after its retries: %r", self.name, where, exc)
            return
        topic = self.settings.dead_letter_topic(self.topic, self.group)
        headers = [(k, v.encode()) for k, v in message.attributes.items()]
        headers += [
            ("prefect-group", self.group.encode()),
            ("source-topic", self.kafka_topic.encode()),
            ("source-partition", str(message.partition).encode()),
            ("source-offset", str(message.offset).encode()),
            ("error", repr(exc).encode()[:ERROR_HEADER_BYTES]),
        ]
        attempt = 0
        while True:
            try:
                await clients.ensure_topic(self.settings, topic)
                producer = await clients.producer(self.settings)
                await producer.send_and_wait(
                    topic, value=message.data, key=message.key, headers=headers
                )
                break
            except (KafkaError, OSError) as failed:
                # The partition waits: moving on would lose the message.
                attempt += 1
                if attempt == 1:
                    log.warning("%s: cannot write the dead letter yet: %r", self.name, failed)
                await self._pause(attempt)
        log.error("%s: %s is a dead letter in %s: %r", self.name, where, topic, exc)

    async def _commit(self, kafka: AIOKafkaConsumer, done: dict[TopicPartition, int]) -> None:
        """Commit `done` and what an earlier commit left; a failed commit is
        tried again after the next poll, not forgotten: a partition that
        gets no more records would otherwise keep its committed offset
        behind for good (its lag stuck, its records read again after any
        restart)."""
        if self.group is None or not (done or self._uncommitted):
            return
        owned = kafka.assignment()
        # A partition taken by a rebalance is its new owner's to read again.
        pending = {tp: o for tp, o in self._uncommitted.items() if tp in owned} | done
        if not pending:
            self._uncommitted = {}
            return
        try:
            await kafka.commit(pending)
        except KafkaError as exc:
            if not self._uncommitted:
                log.warning(
                    "%s: commit failed, tried again after the next poll: %r", self.name, exc
                )
            self._uncommitted = pending
            return
        if self._uncommitted:
            log.info("%s: commit went through again", self.name)
        self._uncommitted = {}

    async def _pause(self, attempt: int) -> None:
        """The one backoff of every retry here: a handler, Kafka, a dead letter."""
        await asyncio.sleep(backoff_s(attempt, self.settings.prefect_retry_base_s, RETRY_CAP_S))

    async def _seek_to_subscription(self, kafka: AIOKafkaConsumer, since_ms: int) -> None:
        """Start where the subscription began, not where the consumer did:
        what was published in between is delivered."""
        deadline = time.monotonic() + ASSIGN_TIMEOUT_S
        while not kafka.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partitions of {self.kafka_topic} in {ASSIGN_TIMEOUT_S} s")
            await asyncio.sleep(0.05)
        parts = sorted(kafka.assignment())
        found = await kafka.offsets_for_times({tp: since_ms for tp in parts})
        ends = await kafka.end_offsets(parts)
        for tp in parts:
            at = found.get(tp)
            kafka.seek(tp, at.offset if at is not None else ends[tp])
