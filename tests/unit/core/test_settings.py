"""Settings from the environment, `.env` and a secrets directory.

Every test runs in an empty temporary directory (no stray `.env`) with every
variable Settings reads removed from the environment, and reads secrets from an
empty directory of its own unless it says otherwise.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from worker.core.settings import Limits, ServicesSettings, ServiceToggle, Settings
from worker.services.event_persister import EventPersister
from worker.services.metrics_server import MetricsServer
from worker.services.retention_trimmer import RetentionTrimmer
from worker.services.service import Service

PLAIN_NAMES = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    return directory


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("PERSISTER_") or name.upper() in PLAIN_NAMES:
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    yield


def load(secrets: Path, **values: Any) -> Settings:
    return Settings(_secrets_dir=secrets, **values)


def errors(secrets: Path, **values: Any) -> list[tuple[tuple[int | str, ...], str, str]]:
    with pytest.raises(ValidationError) as info:
        load(secrets, **values)
    return [(e["loc"], e["type"], e["msg"]) for e in info.value.errors(include_url=False)]


# --- defaults --------------------------------------------------------------------


def test_defaults_validate(secrets: Path) -> None:
    s = load(secrets)
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.topics == ("events",)
    assert s.topic_pattern is None
    assert s.group_id == "event-persister"
    assert s.client_id is None
    assert s.kafka_client_id() == f"{socket.gethostname()}:{os.getpid()}"
    assert s.auto_offset_reset == "earliest"
    assert s.session_timeout_s == 45.0
    assert s.max_poll_interval_s == 300.0
    assert s.database_url == "postgresql+asyncpg://postgres@127.0.0.1:5432/events"
    assert s.database_pool_size == 4
    assert s.batch_size == 2000
    assert s.max_batch_bytes == 8 * 1024 * 1024
    assert s.flush_every_s == 0.5
    assert s.max_message_bytes == 1_572_864
    assert s.max_related == 100
    assert s.max_labels == 500
    assert s.max_resource_id_bytes == 1024
    assert s.naive_timestamps == "utc"
    assert s.shutdown_grace_s == 30.0
    assert (s.rebalance_flush_timeout_s, s.revoke_budget_s) == (None, 10.0)
    assert s.log_level == "INFO"
    assert s.services == ServicesSettings(event_persister=ServiceToggle(enabled=True))


def test_defaults_validate_without_an_explicit_secrets_dir() -> None:
    assert Settings().batch_size == 2000


def test_limits_come_from_the_settings(secrets: Path) -> None:
    s = load(
        secrets, max_related=3, max_labels=7, max_resource_id_bytes=99, naive_timestamps="reject"
    )
    assert s.limits == Limits(
        max_related=3, max_labels=7, max_resource_id_bytes=99, naive_timestamps="reject"
    )


def test_default_limits_match_the_limits_defaults(secrets: Path) -> None:
    assert load(secrets).limits == Limits()


# --- environment -----------------------------------------------------------------


def test_plain_database_url_is_honoured(monkeypatch: pytest.MonkeyPatch, secrets: Path) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@db:5432/plain")
    assert load(secrets).database_url == "postgresql+asyncpg://u@db:5432/plain"


def test_plain_kafka_bootstrap_servers_is_honoured(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    assert load(secrets).kafka_bootstrap_servers == "k1:9092,k2:9092"


def test_prefixed_database_url_is_honoured(monkeypatch: pytest.MonkeyPatch, secrets: Path) -> None:
    monkeypatch.setenv("PERSISTER_DATABASE_URL", "postgresql+asyncpg://u@db:5432/prefixed")
    assert load(secrets).database_url == "postgresql+asyncpg://u@db:5432/prefixed"


def test_prefixed_name_wins_over_the_plain_one(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    # AliasChoices lists PERSISTER_* first, and the first choice found wins.
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@db:5432/plain")
    monkeypatch.setenv("PERSISTER_DATABASE_URL", "postgresql+asyncpg://u@db:5432/prefixed")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "plain:9092")
    monkeypatch.setenv("PERSISTER_KAFKA_BOOTSTRAP_SERVERS", "prefixed:9092")
    s = load(secrets)
    assert s.database_url == "postgresql+asyncpg://u@db:5432/prefixed"
    assert s.kafka_bootstrap_servers == "prefixed:9092"


def test_prefixed_environment_variables_are_read(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    monkeypatch.setenv("PERSISTER_BATCH_SIZE", "17")
    monkeypatch.setenv("PERSISTER_FLUSH_EVERY_S", "0.25")
    monkeypatch.setenv("PERSISTER_NAIVE_TIMESTAMPS", "reject")
    s = load(secrets)
    assert (s.batch_size, s.flush_every_s, s.naive_timestamps) == (17, 0.25, "reject")


def test_unprefixed_field_names_are_not_read(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    monkeypatch.setenv("BATCH_SIZE", "17")
    assert load(secrets).batch_size == 2000


def test_dotenv_in_the_working_directory_is_read(secrets: Path) -> None:
    Path(".env").write_text("PERSISTER_BATCH_SIZE=9\nDATABASE_URL=sqlite:///from-dotenv.db\n")
    s = load(secrets)
    assert s.batch_size == 9
    assert s.database_url == "sqlite+aiosqlite:///from-dotenv.db"


def test_environment_wins_over_dotenv(monkeypatch: pytest.MonkeyPatch, secrets: Path) -> None:
    Path(".env").write_text("PERSISTER_BATCH_SIZE=9\n")
    monkeypatch.setenv("PERSISTER_BATCH_SIZE", "11")
    assert load(secrets).batch_size == 11


def test_init_arguments_win_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    monkeypatch.setenv("PERSISTER_BATCH_SIZE", "11")
    assert load(secrets, batch_size=5).batch_size == 5


# --- database URL ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/events", "postgresql+asyncpg://u:p@db:5432/events"),
        ("postgres://u:p@db/events", "postgresql+asyncpg://u:p@db/events"),
        ("postgresql+asyncpg://u@db/events", "postgresql+asyncpg://u@db/events"),
        ("sqlite:///x", "sqlite+aiosqlite:///x"),
        ("sqlite:////abs/path/x.db", "sqlite+aiosqlite:////abs/path/x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_database_url_gets_the_async_driver(secrets: Path, given: str, expected: str) -> None:
    assert load(secrets, database_url=given).database_url == expected


def test_database_url_keeps_an_escaped_password_intact(secrets: Path) -> None:
    url = "postgresql://u:p%40ss%2Fw@db/events"
    assert (
        load(secrets, database_url=url).database_url
        == "postgresql+asyncpg://u:p%40ss%2Fw@db/events"
    )


def test_mysql_is_rejected_with_a_clear_message(secrets: Path) -> None:
    assert errors(secrets, database_url="mysql://u:p@db/events") == [
        (
            ("PERSISTER_DATABASE_URL",),
            "value_error",
            "Value error, unsupported database 'mysql'; use postgresql or sqlite",
        )
    ]


def test_a_database_url_that_is_not_a_url_is_rejected(secrets: Path) -> None:
    assert errors(secrets, database_url="not a url") == [
        (
            ("PERSISTER_DATABASE_URL",),
            "value_error",
            "Value error, is not a database URL (postgresql://... or sqlite+aiosqlite://...)",
        )
    ]


def test_redacted_database_url_hides_the_password(secrets: Path) -> None:
    s = load(secrets, database_url="postgresql://user:s3cret@db:5432/events")
    assert s.redacted_database_url() == "postgresql+asyncpg://user:***@db:5432/events"
    assert "s3cret" in s.database_url


def test_redacted_database_url_without_password_is_unchanged(secrets: Path) -> None:
    s = load(secrets)
    assert s.redacted_database_url() == "postgresql+asyncpg://postgres@127.0.0.1:5432/events"


# --- topics ----------------------------------------------------------------------


def test_topics_are_comma_separated(monkeypatch: pytest.MonkeyPatch, secrets: Path) -> None:
    monkeypatch.setenv("PERSISTER_TOPICS", "events, audit ,,logs,")
    assert load(secrets).topics == ("events", "audit", "logs")


def test_a_single_topic(monkeypatch: pytest.MonkeyPatch, secrets: Path) -> None:
    monkeypatch.setenv("PERSISTER_TOPICS", "only")
    assert load(secrets).topics == ("only",)


def test_no_topics_and_no_pattern_is_rejected(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    monkeypatch.setenv("PERSISTER_TOPICS", "")
    assert errors(secrets) == [
        ((), "value_error", "Value error, set PERSISTER_TOPICS or PERSISTER_TOPIC_PATTERN")
    ]


def test_a_pattern_alone_is_enough(monkeypatch: pytest.MonkeyPatch, secrets: Path) -> None:
    monkeypatch.setenv("PERSISTER_TOPICS", " , ")
    monkeypatch.setenv("PERSISTER_TOPIC_PATTERN", "events-.*")
    s = load(secrets)
    assert (s.topics, s.topic_pattern) == ((), "events-.*")


# --- bounds ----------------------------------------------------------------------


def test_batch_size_0_is_rejected(secrets: Path) -> None:
    assert errors(secrets, batch_size=0) == [
        (("batch_size",), "greater_than_equal", "Input should be greater than or equal to 1")
    ]


def test_batch_size_1_is_accepted(secrets: Path) -> None:
    assert load(secrets, batch_size=1).batch_size == 1


def test_batch_size_0_from_the_environment_is_rejected(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    monkeypatch.setenv("PERSISTER_BATCH_SIZE", "0")
    assert [e[:2] for e in errors(secrets)] == [(("batch_size",), "greater_than_equal")]


def test_flush_every_s_0_is_rejected(secrets: Path) -> None:
    assert errors(secrets, flush_every_s=0) == [
        (("flush_every_s",), "greater_than", "Input should be greater than 0")
    ]


def test_max_resource_id_bytes_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    monkeypatch.setenv("PERSISTER_MAX_RESOURCE_ID_BYTES", "2000")
    assert load(secrets).limits.max_resource_id_bytes == 2000


def test_max_resource_id_bytes_up_to_what_an_index_entry_holds_is_accepted(secrets: Path) -> None:
    assert load(secrets, max_resource_id_bytes=2048).max_resource_id_bytes == 2048


def test_max_resource_id_bytes_beyond_what_an_index_entry_holds_is_rejected(
    secrets: Path,
) -> None:
    assert errors(secrets, max_resource_id_bytes=2049) == [
        (
            ("max_resource_id_bytes",),
            "less_than_equal",
            "Input should be less than or equal to 2048",
        )
    ]


def test_max_resource_id_bytes_0_is_rejected(secrets: Path) -> None:
    assert [e[:2] for e in errors(secrets, max_resource_id_bytes=0)] == [
        (("max_resource_id_bytes",), "greater_than_equal")
    ]


def test_group_id_of_1024_bytes_is_accepted(secrets: Path) -> None:
    group = "\U0001f600" * 256
    assert load(secrets, group_id=group).group_id == group


@pytest.mark.parametrize("group", ["", "g" * 1025, "\U0001f600" * 256 + "g"])
def test_group_id_that_an_index_entry_cannot_hold_is_rejected(secrets: Path, group: str) -> None:
    assert errors(secrets, group_id=group) == [
        (("group_id",), "value_error", "Value error, must be 1 to 1024 bytes in UTF-8")
    ]


def test_max_message_bytes_above_max_batch_bytes_is_rejected(secrets: Path) -> None:
    assert errors(secrets, max_batch_bytes=2048, max_message_bytes=2049) == [
        (
            (),
            "value_error",
            "Value error, PERSISTER_MAX_MESSAGE_BYTES must not exceed PERSISTER_MAX_BATCH_BYTES",
        )
    ]


def test_max_message_bytes_equal_to_max_batch_bytes_is_accepted(secrets: Path) -> None:
    s = load(secrets, max_batch_bytes=2048, max_message_bytes=2048)
    assert (s.max_batch_bytes, s.max_message_bytes) == (2048, 2048)


def test_session_timeout_equal_to_max_poll_interval_is_rejected(secrets: Path) -> None:
    assert errors(secrets, session_timeout_s=60, max_poll_interval_s=60) == [
        (
            (),
            "value_error",
            "Value error, PERSISTER_SESSION_TIMEOUT_S must be below PERSISTER_MAX_POLL_INTERVAL_S",
        )
    ]


def test_session_timeout_above_max_poll_interval_is_rejected(secrets: Path) -> None:
    assert [e[2] for e in errors(secrets, session_timeout_s=61, max_poll_interval_s=60)] == [
        "Value error, PERSISTER_SESSION_TIMEOUT_S must be below PERSISTER_MAX_POLL_INTERVAL_S"
    ]


def test_session_timeout_below_max_poll_interval_is_accepted(secrets: Path) -> None:
    s = load(secrets, session_timeout_s=59.5, max_poll_interval_s=60)
    assert (s.session_timeout_s, s.max_poll_interval_s) == (59.5, 60)


def test_rebalance_flush_timeout_must_be_below_session_timeout(secrets: Path) -> None:
    # The coordinator's wait for a rejoin is the session timeout, not the
    # max poll interval: a revoke longer than it is dropped from the group.
    assert errors(secrets, rebalance_flush_timeout_s=20, session_timeout_s=20) == [
        (
            (),
            "value_error",
            "Value error, PERSISTER_REBALANCE_FLUSH_TIMEOUT_S must be below "
            "PERSISTER_SESSION_TIMEOUT_S",
        )
    ]
    s = load(secrets, rebalance_flush_timeout_s=19.5, session_timeout_s=20)
    assert s.revoke_budget_s == 19.5
    # Unset, it stays within a short session timeout by itself.
    assert load(secrets, session_timeout_s=6).revoke_budget_s == 3.0


@pytest.mark.parametrize(
    ("name", "value"),
    [("database_timeout_s", 0.5), ("kafka_timeout_s", 0), ("stall_warn_s", 0)],
)
def test_deadlines_must_be_positive(secrets: Path, name: str, value: float) -> None:
    assert [e[:2] for e in errors(secrets, **{name: value})] == [
        ((name,), "greater_than_equal" if name != "stall_warn_s" else "greater_than")
    ]


def test_unknown_log_level_is_rejected(secrets: Path) -> None:
    assert [e[:2] for e in errors(secrets, log_level="TRACE")] == [
        (("log_level",), "literal_error")
    ]


# --- frozen ----------------------------------------------------------------------


def test_settings_are_frozen(secrets: Path) -> None:
    s = load(secrets)
    with pytest.raises(ValidationError) as info:
        s.batch_size = 3  # type: ignore[misc]
    assert info.value.errors()[0]["type"] == "frozen_instance"
    assert s.batch_size == 2000


def test_nested_service_settings_are_frozen(secrets: Path) -> None:
    toggle = load(secrets).services.event_persister
    with pytest.raises(ValidationError):
        toggle.enabled = False  # type: ignore[misc]


# --- secrets directory -------------------------------------------------------------


def test_secrets_directory_is_read(secrets: Path) -> None:
    (secrets / "persister_database_url").write_text("postgresql://app:from-secret@db/events")
    (secrets / "persister_batch_size").write_text("123")
    s = load(secrets)
    assert s.database_url == "postgresql+asyncpg://app:from-secret@db/events"
    assert s.batch_size == 123
    assert s.redacted_database_url() == "postgresql+asyncpg://app:***@db/events"


def test_environment_wins_over_the_secrets_directory(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    (secrets / "persister_batch_size").write_text("123")
    monkeypatch.setenv("PERSISTER_BATCH_SIZE", "45")
    assert load(secrets).batch_size == 45


# --- service toggles ---------------------------------------------------------------


def test_the_event_persister_can_be_switched_off(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    monkeypatch.setenv("PERSISTER_SERVICES__EVENT_PERSISTER__ENABLED", "false")
    s = load(secrets)
    assert s.services.event_persister.enabled is False
    assert EventPersister.enabled(s) is False
    assert Service.enabled_services(s) == [RetentionTrimmer, MetricsServer]


def test_each_service_can_be_switched_off_alone(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    monkeypatch.setenv(RetentionTrimmer.environment_variable_name(), "false")
    assert Service.enabled_services(load(secrets)) == [EventPersister, MetricsServer]


def test_the_service_variable_name_is_the_one_settings_read(
    monkeypatch: pytest.MonkeyPatch, secrets: Path
) -> None:
    monkeypatch.setenv(EventPersister.environment_variable_name(), "false")
    assert load(secrets).services.event_persister.enabled is False


def test_the_event_persister_is_on_by_default(secrets: Path) -> None:
    s = load(secrets)
    assert EventPersister.enabled(s) is True
    assert Service.enabled_services(s) == [EventPersister, RetentionTrimmer, MetricsServer]


def test_prefects_event_tables_need_postgresql(secrets: Path) -> None:
    found = errors(secrets, database_url="sqlite+aiosqlite:///e.db", event_tables="prefect")
    assert [message for _, _, message in found] == [
        "Value error, PERSISTER_EVENT_TABLES=prefect needs PostgreSQL: a Prefect server "
        "shares its PostgreSQL database"
    ]
    assert Settings(_secrets_dir=secrets, event_tables="prefect").event_tables == "prefect"
