"""Configured topics that do not exist yet: one WARNING each when the worker
starts without them, one INFO line when each appears (the consumer picks it
up by itself, see `worker.pipeline.fetching.new_consumer`), and
`persister_conditions{kind="missing_topic"}` counting them meanwhile. Kafka
is asked again every `metadata_max_age_s`, and only while one is missing."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from worker.core.conditions import Conditions
from worker.core.settings import Settings

logger = logging.getLogger(__name__)


class MissingTopics:
    def __init__(self, settings: Settings) -> None:
        # A pattern names no topic that could be missing.
        self.wanted = set() if settings.topic_pattern else set(settings.topics)
        self.every_s = settings.metadata_max_age_s
        self.timeout_s = settings.kafka_timeout_s
        self.conditions = Conditions("missing_topic", unready=False)
        self.missing: set[str] = set()
        self._checked_at: float | None = None

    async def check(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        if self._checked_at is not None and (
            not self.missing or now - self._checked_at < self.every_s
        ):
            return
        self._checked_at = now
        try:
            async with asyncio.timeout(self.timeout_s):
                existing = await consumer.topics()
        except (KafkaError, TimeoutError) as exc:  # fetching reports an unreachable broker
            logger.debug("topics not listed: %r", exc)
            return
        self.missing = self.wanted - existing
        for topic in sorted(self.missing):
            self.conditions.raise_(
                topic,
                f"topic {topic} does not exist yet; it is picked up once created "
                f"(metadata is refreshed every {self.every_s:.0f} s)",
                logging.WARNING,
            )
        for topic in sorted(self.wanted - self.missing):
            self.conditions.clear(topic, f"topic {topic} exists now; consuming it")
