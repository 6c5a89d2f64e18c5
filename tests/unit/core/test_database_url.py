"""The database URL in each form it is given in: one host, libpq's list of
hosts for a failover, SQLAlchemy's `host=` list; what the engine gets from
it; and the one line a bad one gives."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from worker.cli.failures import database_line
from worker.core.database_url import hosts, normalize, shown
from worker.core.setting_names import describe_errors
from worker.core.settings import Settings

LISTED = "postgresql+asyncpg://u:pw@/db?host=h1%3A5432&host=h2%3A5433"


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        # One host, as before.
        ("postgresql://u:pw@db:5432/events", "postgresql+asyncpg://u:pw@db:5432/events"),
        ("postgres://u@db/events", "postgresql+asyncpg://u@db/events"),
        ("postgresql+asyncpg://u@db:5432/events", "postgresql+asyncpg://u@db:5432/events"),
        ("postgresql://u@/events?host=db:6000", "postgresql+asyncpg://u@db:6000/events"),
        ("sqlite:///events.db", "sqlite+aiosqlite:///events.db"),
        # libpq's list of hosts; a host without a port has the default one.
        ("postgresql://u:pw@h1:5432,h2:5433/db", LISTED),
        ("postgresql://u:pw@h1,h2:5433/db", LISTED),
        ("postgresql://u:pw@h1,h2/db?port=5432,5433", LISTED),
        # SQLAlchemy's forms.
        ("postgresql://u:pw@/db?host=h1:5432&host=h2:5433", LISTED),
        ("postgresql+asyncpg://u:pw@/db?host=h1,h2&port=5432,5433", LISTED),
    ],
)
def test_each_form_becomes_the_one_the_engine_is_made_from(given: str, normalized: str) -> None:
    assert normalize(given) == normalized


def test_the_failover_url_keeps_its_options_and_the_driver_gets_every_host() -> None:
    url = normalize(
        "postgresql://app:p%40ss@10.0.0.1:5432,10.0.0.2:5432/events"
        "?target_session_attrs=read-write&application_name=persister"
    )
    engine = create_async_engine(url)
    try:
        _, options = engine.dialect.create_connect_args(make_url(url))
    finally:
        engine.sync_engine.dispose()
    assert options == {
        "user": "app",
        "password": "p@ss",
        "database": "events",
        "host": ["10.0.0.1", "10.0.0.2"],
        "port": [5432, 5432],
        "target_session_attrs": "read-write",
        "application_name": "persister",
    }
    assert hosts(url) == ["10.0.0.1:5432", "10.0.0.2:5432"]


def test_a_comma_in_a_password_is_no_list_of_hosts() -> None:
    url = normalize("postgresql://u:a%2Cb,c@db:5432/events")
    assert make_url(url).password == "a,b,c"
    assert hosts(url) == ["db:5432"]


def test_the_url_is_shown_with_every_host_and_no_password() -> None:
    settings = Settings(
        database_url="postgresql://u:s3cret@h1:5432,h2:5432/db?target_session_attrs=read-write"
    )
    assert settings.redacted_database_url() == (
        "postgresql://u:***@h1:5432,h2:5432/db?target_session_attrs=read-write"
    )
    single = Settings(database_url="postgresql://u:s3cret@db:5432/events")
    assert single.redacted_database_url() == "postgresql+asyncpg://u:***@db:5432/events"
    assert shown("?") == "?"


def line_for(url: str) -> list[str]:
    with pytest.raises(ValidationError) as info:
        Settings(database_url=url)
    return describe_errors(info.value.errors(include_url=False))


FIX = "; fix PERSISTER_DATABASE_URL (or DATABASE_URL)"


NOT_A_HOST = "in the host list is {}; list host names or IPv4 addresses"
BOTH = "lists hosts both before the database name and in host=; use one"
ATTRS = "any, primary, standby, prefer-standby, read-write, read-only"


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("postgresql://u:pw@h1,h2:x/db", "host 'h2:x' has no valid port ('x' is not 1 to 65535)"),
        ("postgresql://u@h1,h2:0/db", "host 'h2:0' has no valid port ('0' is not 1 to 65535)"),
        ("postgresql://u@h1:5432,,h2/db", f"host '' {NOT_A_HOST.format('not a host name')}"),
        (
            "postgresql://u@[::1]:5432,h2/db",
            f"host '[::1]:5432' {NOT_A_HOST.format('an IPv6 address')}",
        ),
        ("postgresql://u@h1,h2/db?host=h3", BOTH),
        ("postgresql://u@h1/db?host=h2&host=h3", BOTH),
        ("postgresql://u@/db?host=h1,h2,h3&port=1,2", "names 3 hosts but 2 ports"),
        ("postgresql://u@/db?host=h1:1&port=2", "host 'h1:1' has a port, and port= gives another"),
        (
            "postgresql://u@h1,h2/db?target_session_attrs=rw",
            f"target_session_attrs=rw is not one of {ATTRS}",
        ),
    ],
)
def test_a_bad_url_gives_one_line_naming_the_variable_and_no_password(
    given: str, problem: str
) -> None:
    assert line_for(given) == [f"invalid setting DATABASE_URL: {problem}{FIX}"]


def test_a_url_that_is_none_is_still_refused_as_before() -> None:
    assert line_for("mysql://u:hunter2@h/db") == [
        "invalid setting DATABASE_URL: unsupported database 'mysql'; use postgresql or sqlite"
    ]


WHERE = (
    "postgresql+asyncpg://u:***@/db?host=h1%3A5432&host=h2%3A5432&target_session_attrs=read-write"
)


def test_a_connection_failure_names_every_host_tried() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed ('h2', 5432)")
    assert database_line(refused, WHERE, "DATABASE_URL") == (
        "database postgresql://u:***@h1:5432,h2:5432/db?target_session_attrs=read-write: "
        "no host could be used (tried h1:5432, h2:5432 in turn; the last error: "
        "ConnectionRefusedError: [Errno 111] Connect call failed ('h2', 5432)); "
        "check DATABASE_URL and that its primary runs"
    )


def test_hosts_that_all_answer_as_standbys_are_named() -> None:
    class InternalError(Exception):
        orig = Exception(
            "None of the hosts match the target attribute requirement "
            "<SessionAttribute.read_write: 'read-write'>"
        )

    assert database_line(InternalError(), WHERE, "DATABASE_URL") == (
        "database postgresql://u:***@h1:5432,h2:5432/db?target_session_attrs=read-write: "
        "no host could be used (tried h1:5432, h2:5432 in turn; each answered, none as "
        "target_session_attrs asks (a standby?)); check DATABASE_URL and that its primary runs"
    )


def test_one_host_is_worded_as_before() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    assert database_line(refused, "postgresql+asyncpg://u:***@db:5432/events", "DATABASE_URL") == (
        "database postgresql+asyncpg://u:***@db:5432/events is unreachable "
        "(ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)); "
        "check DATABASE_URL and that PostgreSQL runs"
    )
