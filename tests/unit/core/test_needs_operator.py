"""Which failures no retry mends (`worker.core.errors.needs_operator`), with
the exceptions the drivers really raise: asyncpg's, translated and wrapped by
SQLAlchemy as the worker's engine hands them on, and aiokafka's."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions as pg  # type: ignore[import-untyped, unused-ignore]
import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    NotCoordinatorForGroupError,
    RequestTimedOutError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_dbapi,
)
from sqlalchemy.exc import DBAPIError

from worker.core.errors import ErrorKind, OperatorNeeded, classify, needs_operator

DBAPI = AsyncAdapt_asyncpg_dbapi(asyncpg)  # type: ignore[no-untyped-call]


def through_sqlalchemy(error: Exception) -> DBAPIError:
    """`error` as SQLAlchemy's asyncpg dialect raises it to the worker."""
    try:
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(DBAPI, error)
    except DBAPI.Error as translated:
        wrapped = DBAPIError.instance("SELECT 1", {}, translated, DBAPI.Error)
        assert isinstance(wrapped, DBAPIError)
        return wrapped
    raise AssertionError("not translated")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (pg.InvalidPasswordError, 'password authentication failed for user "persister"'),
        (pg.InvalidAuthorizationSpecificationError, 'role "persister" does not exist'),
        (pg.InsufficientPrivilegeError, "permission denied for table persister_dead_letters"),
        (pg.UndefinedTableError, 'relation "persister_consumer_offsets" does not exist'),
        (pg.InvalidCatalogNameError, 'database "events" does not exist'),
    ],
    ids=lambda e: e.__name__ if isinstance(e, type) else "",
)
def test_a_refused_login_grant_table_or_database_needs_a_person(
    error: type[Exception], message: str
) -> None:
    exc = through_sqlalchemy(error(message))
    assert needs_operator(exc)
    # Still never a data error: no row is dead-lettered for it.
    assert classify(exc) is ErrorKind.TRANSIENT


def test_found_through_causes() -> None:
    outer = RuntimeError("loading offsets failed")
    outer.__cause__ = through_sqlalchemy(pg.InsufficientPrivilegeError("permission denied"))
    assert needs_operator(outer)


@pytest.mark.parametrize(
    "error",
    [
        pg.AdminShutdownError,
        pg.CannotConnectNowError,
        pg.ConnectionDoesNotExistError,
        pg.TooManyConnectionsError,
        pg.ReadOnlySQLTransactionError,
        pg.QueryCanceledError,
        pg.SerializationError,
        pg.DeadlockDetectedError,
        pg.UniqueViolationError,
        pg.InvalidTextRepresentationError,
    ],
    ids=lambda e: e.__name__,
)
def test_outages_and_data_errors_do_not(error: type[Exception]) -> None:
    assert not needs_operator(through_sqlalchemy(error("x")))


@pytest.mark.parametrize(
    "exc",
    [ConnectionRefusedError(111, "Connect call failed"), TimeoutError(), OSError("gone")],
    ids=lambda e: type(e).__name__,
)
def test_an_unreachable_database_does_not(exc: BaseException) -> None:
    assert not needs_operator(exc)


@pytest.mark.parametrize(
    "exc",
    [
        # What a connection's SASL login raises on a wrong password (aiokafka
        # builds it from the broker's SaslAuthenticate answer).
        SaslAuthenticationFailed(
            "Authentication failed during authentication due to invalid credentials "
            "with SASL mechanism PLAIN"
        ),
        TopicAuthorizationFailedError(),
        GroupAuthorizationFailedError(),
        OperatorNeeded("Kafka refused the login"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_kafka_refusing_the_login_or_access_needs_a_person(exc: BaseException) -> None:
    assert needs_operator(exc)


@pytest.mark.parametrize(
    "exc",
    [
        # What a consumer's start raises for a down broker, and for a refused
        # login too (the bootstrap logs the reason): see kafka_login.
        KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092, 0)]"),
        KafkaTimeoutError(),
        RequestTimedOutError(),
        NodeNotReadyError(),
        NotCoordinatorForGroupError(),
        UnknownTopicOrPartitionError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_kafka_outages_do_not(exc: BaseException) -> None:
    assert not needs_operator(exc)
