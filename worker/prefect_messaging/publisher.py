"""Prefect's publisher on Kafka: a message is a record of `<prefix><topic>`,
its data the value as given, its attributes the headers, and its `id`
attribute (an event's id) the key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from prefect.server.utilities.messaging import Cache, create_cache
from prefect.server.utilities.messaging import Publisher as PrefectPublisher

from worker.prefect_messaging import clients
from worker.prefect_messaging.cache import Cache as SharedCache
from worker.prefect_messaging.messages import KafkaMessage, record_fields
from worker.prefect_messaging.settings import MessagingSettings, messaging_settings

log = logging.getLogger(__name__)

# Sends awaited together: a publisher held open for a whole stream (Prefect's
# `/api/events/in` websocket) is confirmed every this many messages.
CONFIRM_EVERY = 1000


class Publisher(PrefectPublisher):
    """Sends without waiting for each acknowledgement and waits for all of them
    when the block ends, so a request's events travel in one batch and the
    request fails if any was not written.

    With this package's cache, a message counts as seen only once Kafka has
    it: a publisher that failed or died before that leaves nothing behind
    that would make a retry of the same event look like a duplicate."""

    def __init__(
        self,
        topic: str,
        cache: Cache | None = None,
        deduplicate_by: str | None = None,
        settings: MessagingSettings | None = None,
    ) -> None:
        self.settings = settings or messaging_settings()
        self.topic = topic
        self.kafka_topic = self.settings.kafka_topic(topic)
        self.cache = cache or create_cache()
        self.deduplicate_by = deduplicate_by
        self._sent: list[tuple[KafkaMessage, asyncio.Future[Any]]] = []

    async def __aenter__(self) -> Self:
        await clients.ensure_topic(self.settings, self.kafka_topic)
        self._producer = await clients.producer(self.settings)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self._confirm()

    async def publish_data(self, data: bytes, attributes: Mapping[str, str]) -> None:
        message = KafkaMessage(data, dict(attributes))
        to_send = [message]
        if self.deduplicate_by:
            to_send = await self.cache.without_duplicates(self.deduplicate_by, to_send)
        try:
            for each in to_send:
                key, value, headers = record_fields(each)
                sent = await self._producer.send(
                    self.kafka_topic, value=value, key=key, headers=headers
                )
                self._sent.append((each, sent))
        except Exception:
            await self._forget([message])
            raise
        if len(self._sent) >= CONFIRM_EVERY:
            await self._confirm()

    async def _confirm(self) -> None:
        """Wait for every send so far; a failed one is forgotten by the cache
        (so publishing it again is not taken for a duplicate) and raised."""
        sent, self._sent = self._sent, []
        if not sent:
            return
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        outcomes = list(zip(sent, results, strict=True))
        failed = [m for (m, _), r in outcomes if isinstance(r, BaseException)]
        if self.deduplicate_by and isinstance(self.cache, SharedCache):
            written = [m for (m, _), r in outcomes if not isinstance(r, BaseException)]
            await self.cache.remember(self.deduplicate_by, written)
        if failed:
            await self._forget(failed)
            first = next(r for r in results if isinstance(r, BaseException))
            log.error(
                "%d of %d messages to Kafka topic %s were not written: %s",
                len(failed),
                len(sent),
                self.kafka_topic,
                first,
            )
            raise first

    async def _forget(self, messages: list[KafkaMessage]) -> None:
        if self.deduplicate_by:
            await self.cache.forget_duplicates(self.deduplicate_by, messages)
