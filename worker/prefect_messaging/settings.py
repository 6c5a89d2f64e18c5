"""The broker's settings: Kafka's connection (`PERSISTER_KAFKA_*`, as the
worker reads them) and how Prefect's topics and groups map onto Kafka."""

from __future__ import annotations

import functools
import os
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from worker.core.kafka_connection import KafkaConnection
from worker.core.settings import SECRETS_DIR

# The group Prefect's own event persister consumes `events` in. With this
# broker, `persister run` is the event persister; Prefect's must be off.
PERSISTER_GROUP = "event-persister"


class MessagingSettings(KafkaConnection):
    model_config = SettingsConfigDict(
        env_prefix="PERSISTER_",
        extra="ignore",
        frozen=True,
        secrets_dir=SECRETS_DIR if os.path.isdir(SECRETS_DIR) else None,
    )

    # Prefect's topic `events` is the Kafka topic `<prefix>events`; the
    # worker's PERSISTER_TOPICS must name the same one.
    prefect_topic_prefix: str = ""
    # Partitions of a topic the broker creates because it is missing; the
    # event persister's replicas can share no more than this.
    prefect_topic_partitions: int = Field(8, ge=1, le=10_000)
    # Times a handler's failure is retried before the message becomes a dead
    # letter (Prefect's brokers retry 3 times).
    # Where a consumer group that has never committed starts. `latest`: an
    # automation added today does not act on last week's events still kept
    # in the topic (the in-memory broker delivers only what comes after).
    prefect_new_group_offset: Literal["earliest", "latest"] = "latest"
    prefect_max_retries: int = Field(3, ge=0, le=100)
    prefect_retry_base_s: float = Field(0.5, gt=0, le=60)

    def kafka_topic(self, topic: str) -> str:
        return f"{self.prefect_topic_prefix}{topic}"

    def dead_letter_topic(self, topic: str, group: str) -> str:
        """Where a group's failed messages of `topic` go: one topic per group,
        as each of Prefect's subscriptions has its own dead letters."""
        return f"{self.kafka_topic(topic)}.{group}.dlq"


@functools.cache
def messaging_settings() -> MessagingSettings:
    """Read once per process: Prefect opens a publisher per request."""
    return MessagingSettings()
