"""Which database errors are retried and which rows are dead-lettered."""

from __future__ import annotations

import asyncpg.exceptions as pg  # type: ignore[import-untyped, unused-ignore]
import pytest
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError

from worker.core.errors import ErrorKind, classify, describe, sqlstate


class DriverError(Exception):
    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def wrapped(code: str | None, message: str = "boom") -> DBAPIError:
    """What SQLAlchemy raises for a driver error with this SQLSTATE."""
    return DBAPIError("INSERT ...", {}, DriverError(message, code))


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("22P02", ErrorKind.DATA),  # invalid text representation
        ("22001", ErrorKind.DATA),  # value too long
        ("22P05", ErrorKind.DATA),  # \u0000 in jsonb
        ("23502", ErrorKind.DATA),  # not null violation
        ("22021", ErrorKind.DATA),  # character not in repertoire (a NUL in text)
        ("54000", ErrorKind.DATA),  # program limit exceeded: index entry too large
        ("54001", ErrorKind.DATA),  # statement too complex: JSON nested too deep
        ("54011", ErrorKind.TRANSIENT),  # too many columns: the schema, not a row
        ("54023", ErrorKind.TRANSIENT),  # too many arguments: the statement, not a row
        ("25006", ErrorKind.TRANSIENT),  # read-only transaction: a standby after failover
        ("57P03", ErrorKind.TRANSIENT),  # cannot connect now: starting up
        ("55000", ErrorKind.TRANSIENT),  # database not accepting connections
        ("57014", ErrorKind.TRANSIENT),  # statement timeout
        ("XX000", ErrorKind.TRANSIENT),  # internal error
        ("08006", ErrorKind.TRANSIENT),  # connection failure
        ("40001", ErrorKind.TRANSIENT),  # serialization failure
        ("40P01", ErrorKind.TRANSIENT),  # deadlock
        ("57P01", ErrorKind.TRANSIENT),  # admin shutdown
        ("53300", ErrorKind.TRANSIENT),  # too many connections
        ("53100", ErrorKind.TRANSIENT),  # disk full
        ("42P01", ErrorKind.TRANSIENT),  # undefined table: retried until migrated
        (None, ErrorKind.TRANSIENT),  # no SQLSTATE: connection refused and the like
    ],
)
def test_classify_by_sqlstate(code: str | None, kind: ErrorKind) -> None:
    assert classify(wrapped(code)) is kind


def test_errors_without_a_database_are_transient() -> None:
    assert classify(ConnectionRefusedError()) is ErrorKind.TRANSIENT
    assert classify(TimeoutError()) is ErrorKind.TRANSIENT
    assert classify(OperationalError("SELECT 1", {}, OSError("gone"))) is ErrorKind.TRANSIENT


def test_a_value_that_cannot_be_bound_is_the_rows_fault() -> None:
    exc = StatementError("bind failed", "INSERT ...", {}, TypeError("Integer exceeds 64-bit range"))
    assert classify(exc) is ErrorKind.DATA


def test_sqlstate_found_through_causes() -> None:
    outer = RuntimeError("outer")
    outer.__cause__ = wrapped("22P02")
    assert sqlstate(outer) == "22P02"
    assert sqlstate(ValueError()) is None


def test_describe_names_the_driver_error_and_its_sqlstate() -> None:
    error_class, message = describe(wrapped("22P05", "unsupported Unicode escape\nDETAIL: more"))
    assert error_class == "DatabaseRejected:DriverError"
    assert message == "SQLSTATE 22P05: unsupported Unicode escape"


def test_describe_a_program_limit_as_asyncpg_raises_it() -> None:
    driver = pg.ProgramLimitExceededError("index row requires 10024 bytes, maximum size is 8191")
    error_class, message = describe(DBAPIError("INSERT ...", {}, driver))
    assert error_class == "DatabaseRejected:ProgramLimitExceededError"
    assert message == "SQLSTATE 54000: index row requires 10024 bytes, maximum size is 8191"


# What asyncpg raises when the database is down, restarting, in recovery or
# refusing connections: never a data error, so an outage makes no dead letter.
OUTAGE_ERRORS = [
    pg.AdminShutdownError,
    pg.CrashShutdownError,
    pg.CannotConnectNowError,
    pg.ConnectionDoesNotExistError,
    pg.ConnectionFailureError,
    pg.ConnectionRejectionError,
    pg.TooManyConnectionsError,
    pg.ReadOnlySQLTransactionError,
    pg.DiskFullError,
    pg.OutOfMemoryError,
    pg.ObjectNotInPrerequisiteStateError,
    pg.QueryCanceledError,
]


@pytest.mark.parametrize("error", OUTAGE_ERRORS, ids=lambda e: e.__name__)
def test_what_an_outage_raises_is_retried(error: type[Exception]) -> None:
    assert classify(DBAPIError("INSERT ...", {}, error("gone"))) is ErrorKind.TRANSIENT


@pytest.mark.parametrize(
    "error",
    [
        pg.ProgramLimitExceededError,
        pg.StatementTooComplexError,
        pg.UntranslatableCharacterError,
        pg.CharacterNotInRepertoireError,
        pg.NotNullViolationError,
        pg.CheckViolationError,
    ],
    ids=lambda e: e.__name__,
)
def test_a_row_the_database_refuses_is_a_data_error_whatever_came_before(
    error: type[Exception],
) -> None:
    """Classification has no memory: the same refusal right after a run of
    outage errors is still isolated, so a partition holding such a row moves
    on as soon as the database answers."""
    for outage in OUTAGE_ERRORS:
        classify(DBAPIError("INSERT ...", {}, outage("gone")))
    assert classify(DBAPIError("INSERT ...", {}, error("refused"))) is ErrorKind.DATA
