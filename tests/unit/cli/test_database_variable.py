"""A database failure names the variable the URL was read from (settings
accept PERSISTER_DATABASE_URL and DATABASE_URL), never the password."""

from __future__ import annotations

import pytest
from pydantic import AliasChoices

from worker.cli.common import report, state
from worker.cli.failures import EXIT_UNAVAILABLE, DatabaseFailure
from worker.core.database_url import DATABASE_VARIABLES, variable_set
from worker.core.settings import Settings
from worker.pipeline.database_wait import refused_line

URL = "postgresql://u:hunter2@127.0.0.1:1/db"
UNREACHABLE = (
    "database {} is unreachable (ConnectionRefusedError: [Errno 111] Connect call failed "
    "('127.0.0.1', 1)); check {} and that PostgreSQL runs\n"
)


def report_unreachable(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> int:
    """What a command reports when the database refuses the connection,
    with `environ` as the only database variables set."""
    for name in DATABASE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(state, "settings", Settings(_env_file=None))
    monkeypatch.setattr(state, "json_logs", False)
    failure = DatabaseFailure("unreachable")
    failure.__cause__ = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
    return report(failure)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PERSISTER_DATABASE_URL": URL}, "PERSISTER_DATABASE_URL"),
        ({"DATABASE_URL": URL}, "DATABASE_URL"),
        ({"persister_database_url": URL}, "PERSISTER_DATABASE_URL"),
        # Both set: settings read the prefixed one.
        ({"DATABASE_URL": "sqlite://", "PERSISTER_DATABASE_URL": URL}, "PERSISTER_DATABASE_URL"),
    ],
    ids=["prefixed", "plain", "lower-case", "both"],
)
def test_the_variable_that_was_set_is_named(
    environ: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert report_unreachable(monkeypatch, environ) == EXIT_UNAVAILABLE
    shown = "postgresql+asyncpg://u:***@127.0.0.1:1/db"
    assert capsys.readouterr().err == UNREACHABLE.format(shown, named)


def test_neither_set_names_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report_unreachable(monkeypatch, {}) == EXIT_UNAVAILABLE
    shown = "postgresql+asyncpg://postgres@127.0.0.1:5432/events"  # the default
    both = "PERSISTER_DATABASE_URL (or DATABASE_URL)"
    assert capsys.readouterr().err == UNREACHABLE.format(shown, both)


def test_the_names_are_the_ones_settings_read() -> None:
    alias = Settings.model_fields["database_url"].validation_alias
    assert isinstance(alias, AliasChoices)
    assert tuple(alias.choices) == DATABASE_VARIABLES


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PERSISTER_DATABASE_URL": URL}, "PERSISTER_DATABASE_URL"),
        ({"DATABASE_URL": URL}, "DATABASE_URL"),
        ({}, "PERSISTER_DATABASE_URL (or DATABASE_URL)"),
    ],
)
def test_a_running_worker_refused_by_the_database_names_the_variable_too(
    environ: dict[str, str], named: str
) -> None:
    """The worker's own start-up refusal (`persister run`), not only the
    commands' lines."""
    refused = RuntimeError('password authentication failed for user "u"')
    line = refused_line(refused, "postgresql://u:***@db/events", variable_set(environ))
    assert line.endswith(f"; check {named}")
