"""The one settings object: read from the environment, `.env` and a secrets
directory, validated once at start-up, frozen afterwards."""

from __future__ import annotations

import os
import re
import socket
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url

from schemas.limits import (
    DEFAULT_MAX_RESOURCE_ID_BYTES,
    MAX_GROUP_ID_BYTES,
    MAX_RESOURCE_ID_BYTES_CAP,
    utf8_length,
)
from worker.core.database_url import normalize as normalize_database_url
from worker.core.database_url import shown as shown_database_url
from worker.core.kafka_connection import KafkaConnection

ENV_PREFIX = "PERSISTER_"
SECRETS_DIR = os.environ.get("PERSISTER_SECRETS_DIR", "/run/secrets")


def replica_id() -> str:
    """This process, as `status` names it: `<host>:<pid>`."""
    return f"{socket.gethostname()}:{os.getpid()}"


CommaList = Annotated[tuple[str, ...], NoDecode]

DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """`90s`, `15m`, `2h`, `7d`, `1w`, or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    text = str(value).strip().lower()
    unit = DURATION_UNITS_S.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise ValueError(f"{value!r} is not a duration (like 90s, 15m, 2h, 7d)") from None
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be positive")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class ServiceToggle(BaseModel):
    """Per-service settings; each service can be switched off on its own."""

    model_config = ConfigDict(frozen=True)
    enabled: bool = True


class ServicesSettings(BaseModel):
    model_config = ConfigDict(frozen=True)
    event_persister: ServiceToggle = ServiceToggle()
    retention_trimmer: ServiceToggle = ServiceToggle()
    metrics_server: ServiceToggle = ServiceToggle()


class Limits(BaseModel):
    """Envelope limits; the validator reads them from its context."""

    model_config = ConfigDict(frozen=True)
    max_related: int = 100
    max_labels: int = 500
    max_resource_id_bytes: int = DEFAULT_MAX_RESOURCE_ID_BYTES
    naive_timestamps: Literal["utc", "reject"] = "utc"


DEFAULT_REVOKE_BUDGET_S = 10.0


class Settings(KafkaConnection):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
        secrets_dir=SECRETS_DIR if os.path.isdir(SECRETS_DIR) else None,
    )

    topics: CommaList = ("events",)
    topic_pattern: str | None = None
    group_id: str = "event-persister"
    # Static membership: a restarted replica with the same id gets its
    # partitions back without a rebalance (within the session timeout).
    group_instance_id: str | None = None
    # Default: `replica_id()`, so `status` tells the replicas apart.
    client_id: str | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_s: float = Field(45.0, gt=0)
    # How soon a member hears of a rebalance when it has no offset commit
    # to hear it from; capped at a third of the session timeout.
    heartbeat_interval_s: float = Field(3.0, gt=0)
    max_poll_interval_s: float = Field(300.0, gt=0)
    metadata_max_age_s: float = Field(30.0, gt=0)
    # How often a partition whose records cannot be read is fetched again.
    fetch_retry_s: float = Field(60.0, gt=0, le=3600)

    database_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/events",
        validation_alias=AliasChoices("PERSISTER_DATABASE_URL", "DATABASE_URL"),
    )
    database_pool_size: int = Field(4, ge=1, le=100)

    batch_size: int = Field(2000, ge=1, le=100_000)
    max_batch_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_buffered_bytes: int = Field(128 * 1024 * 1024, ge=1024)
    flush_every_s: float = Field(0.5, gt=0, le=60)
    # False: fixed batches (size, bytes or age only), for comparison.
    flush_when_caught_up: bool = True
    max_message_bytes: int = Field(1_572_864, ge=1024)
    max_related: int = Field(100, ge=0)
    max_labels: int = Field(500, ge=1)
    # Capped at what an index entry holds beside a role (see schemas.limits).
    max_resource_id_bytes: int = Field(
        DEFAULT_MAX_RESOURCE_ID_BYTES, ge=1, le=MAX_RESOURCE_ID_BYTES_CAP
    )
    naive_timestamps: Literal["utc", "reject"] = "utc"

    # "<topic>" stands for the source topic; empty switches the topic off
    # (dead letters still go to the persister_dead_letters table).
    dead_letter_topic: str = "<topic>.dlq"

    retention: Duration = timedelta(days=7)
    # Shorter retention for event names matching a glob, e.g. {"heartbeat.*": "1d"}.
    retention_overrides: dict[str, Duration] = Field(default_factory=dict)
    trim_every: Duration = timedelta(minutes=15)
    trim_batch_size: int = Field(10_000, ge=1, le=1_000_000)
    lease_ttl: Duration = timedelta(seconds=15)
    # PostgreSQL: the time range of one partition of events and
    # event_resources, and how many are kept created ahead of now.
    partition_width: Duration = timedelta(days=1)
    partitions_ahead: int = Field(2, ge=1, le=1000)
    # Who makes `events` and `event_resources`: the worker's migrations
    # (partitioned by time), or a Prefect server's, beside which it then
    # writes (see schemas.sharing).
    event_tables: Literal["persister", "prefect"] = "persister"

    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9400, ge=0, le=65535)

    shutdown_grace_s: float = Field(30.0, gt=0)
    # Default: 10 s, or half the session timeout if that is shorter (see
    # `revoke_budget_s`).
    rebalance_flush_timeout_s: float | None = Field(None, gt=0)
    # Deadlines of every wait on the network (see worker.pipeline.stalls):
    # one database transaction or statement, one Kafka request (commit,
    # metadata, a seek); and how long any of them, or a partition's
    # unfinished write, waits before a WARNING says so.
    database_timeout_s: float = Field(30.0, ge=1, le=3600)
    kafka_timeout_s: float = Field(30.0, ge=1, le=3600)
    stall_warn_s: float = Field(10.0, gt=0, le=3600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    services: ServicesSettings = ServicesSettings()

    @field_validator("topics", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("topic_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        # Checked here, not by the client library on its first metadata update.
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"is not a regular expression ({exc})") from None
        return value

    @field_validator("partition_width")
    @classmethod
    def _partition_width(cls, value: timedelta) -> timedelta:
        if not timedelta(minutes=1) <= value <= timedelta(days=366):
            raise ValueError("must be between 1m and 366d")
        return value

    @field_validator("group_id")
    @classmethod
    def _indexable_group_id(cls, value: str) -> str:
        # Part of the keys of consumer_offsets and dead_letters.
        if not value or utf8_length(value) > MAX_GROUP_ID_BYTES:
            raise ValueError(f"must be 1 to {MAX_GROUP_ID_BYTES} bytes in UTF-8")
        return value

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        """Accept the usual `postgresql://` forms, a list of hosts too (see
        `worker.core.database_url`), and pick the async driver for them."""
        return normalize_database_url(value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.topics and not self.topic_pattern:
            raise ValueError("set PERSISTER_TOPICS or PERSISTER_TOPIC_PATTERN")
        if self.max_batch_bytes > self.max_buffered_bytes:
            raise ValueError(
                "PERSISTER_MAX_BATCH_BYTES must not exceed PERSISTER_MAX_BUFFERED_BYTES"
            )
        if self.max_message_bytes > self.max_batch_bytes:
            raise ValueError(
                "PERSISTER_MAX_MESSAGE_BYTES must not exceed PERSISTER_MAX_BATCH_BYTES"
            )
        for pattern, kept in self.retention_overrides.items():
            if kept > self.retention:
                raise ValueError(
                    f"PERSISTER_RETENTION_OVERRIDES: {pattern!r} ({kept}) is longer than "
                    f"PERSISTER_RETENTION ({self.retention}); an override can only shorten it"
                )
        # The coordinator waits for a rejoin up to the session timeout (the
        # consumer's rebalance timeout, see worker.pipeline.fetching): the
        # whole revoke (flush, dead letters, commit) must end before it.
        if (
            self.rebalance_flush_timeout_s is not None
            and self.rebalance_flush_timeout_s >= self.session_timeout_s
        ):
            raise ValueError(
                "PERSISTER_REBALANCE_FLUSH_TIMEOUT_S must be below PERSISTER_SESSION_TIMEOUT_S"
            )
        if self.session_timeout_s >= self.max_poll_interval_s:
            raise ValueError(
                "PERSISTER_SESSION_TIMEOUT_S must be below PERSISTER_MAX_POLL_INTERVAL_S"
            )
        if self.event_tables == "prefect" and not self.database_url.startswith("postgresql"):
            raise ValueError(
                "PERSISTER_EVENT_TABLES=prefect needs PostgreSQL: a Prefect server shares "
                "its PostgreSQL database"
            )
        return self

    @property
    def revoke_budget_s(self) -> float:
        """How long a revoke may take, all of it (flush, dead letters, commit)."""
        if self.rebalance_flush_timeout_s is not None:
            return self.rebalance_flush_timeout_s
        return min(DEFAULT_REVOKE_BUDGET_S, self.session_timeout_s / 2)

    @property
    def limits(self) -> Limits:
        return Limits(
            max_related=self.max_related,
            max_labels=self.max_labels,
            max_resource_id_bytes=self.max_resource_id_bytes,
            naive_timestamps=self.naive_timestamps,
        )

    def kafka_client_id(self) -> str:
        return self.client_id or replica_id()

    def redacted_database_url(self) -> str:
        return shown_database_url(make_url(self.database_url).render_as_string(hide_password=True))
