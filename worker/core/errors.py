"""Which database errors are worth retrying and which are the data's fault.

Pure: reads the SQLSTATE off an exception, decides nothing else. A transient
error pauses the partition and retries the batch later; a data error means one
or more rows of the batch will never be accepted, so they are isolated and
dead-lettered. A data error is one that names a row and will name it again
whatever the database's state; anything else is retried (a wrong retry of a
per-row error would block the partition for good, a wrong dead letter of a
statement-wide error would empty a batch into the dead-letter table).

There is no "the database is failing" switch in front of this, and none is
needed to keep outages from making dead letters. A data SQLSTATE is the
database answering: it received the statement, read the row and refused it.
A database that is down, restarting, in recovery, read-only or out of
connections never answers that way: its errors are classes 08, 25, 53, 55,
57, 58 or carry no SQLSTATE at all, and all of those are retried. A value the
driver cannot bind is refused before the database is involved, whatever its
state. So a data error is isolated whenever it comes, also on the first write
after an outage; and dead letters are written in the transaction that isolates
them, so none exists unless the database committed it. (A switch that retried
data errors while the last write had failed never turned off for a replica
whose only partition held such a row: that write failed every time.)
"""

from __future__ import annotations

from enum import Enum

from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from sqlalchemy.exc import DBAPIError, StatementError

# SQLSTATE classes (first two characters) and codes.
# Every other class is retried: 08 connection exception, 40 serialization
# failure and deadlock, 53 disk full / out of memory / too many connections,
# 57 admin shutdown / cannot connect now, 58 I/O error, XX internal error or
# corruption, and the unexpected ones (42 undefined table before `migrate`:
# retried, but see `needs_operator`).
DATA_CLASSES = {
    "22",  # data exception: invalid text, value too long, \u0000 in JSON text, ...
    "23",  # integrity constraint violation: a NOT NULL or CHECK a row breaks
}
# Class 54 (program limit exceeded) is split: the statement is always the same,
# so a limit that depends on it would fail every batch, but these two depend
# on a row's values. One the whole batch hits (an array or a value grown too
# large by the batch's size) heals under isolation's halving: only a row the
# database refuses on its own becomes a dead letter.
DATA_CODES = {
    "54000",  # program_limit_exceeded: an index entry larger than a third of a
    # page (an index the worker does not know about, or a smaller page size),
    # a row too big, a jsonb value over 256 MB
    "54001",  # statement_too_complex: "stack depth limit exceeded", parsing a
    # JSON value nested deeper than the server's max_stack_depth allows
}
# Retried: 54011 too_many_columns and 54023 too_many_arguments concern the
# statement or the schema, never one row.
MAX_CHAIN = 10

# Failures no retry mends: until a person changes a setting, a grant or the
# schema, every attempt fails the same way. They are still never data errors.
OPERATOR_SQLSTATES = {
    "28P01",  # invalid_password
    "28000",  # invalid_authorization_specification: no such role, not allowed to log in
    "42501",  # insufficient_privilege
    "42P01",  # undefined_table: not migrated
    "3D000",  # invalid_catalog_name: the database does not exist
}
# aiokafka raises the first two from a connection's login (the client's
# bootstrap logs them and raises a KafkaConnectionError instead; see
# `worker.pipeline.persister`), the others in a broker's answer.
OPERATOR_KAFKA_ERRORS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)


class OperatorNeeded(Exception):
    """What only a person can fix, found before the work starts; the message
    is the one line that says what and how (the command exits 4)."""


class ErrorKind(Enum):
    TRANSIENT = "transient"
    DATA = "data"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps (SQLAlchemy's `orig`, then `__cause__`)."""
    chain = [exc]
    while len(chain) < MAX_CHAIN:
        inner = getattr(chain[-1], "orig", None) or chain[-1].__cause__
        if not isinstance(inner, BaseException) or inner in chain:
            break
        chain.append(inner)
    return chain


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, however deeply it is wrapped."""
    for current in _chain(exc):
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def classify(exc: BaseException) -> ErrorKind:
    code = sqlstate(exc)
    if code is not None and (code[:2] in DATA_CLASSES or code in DATA_CODES):
        return ErrorKind.DATA
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        # Raised while binding a row's values, before the database saw them
        # (e.g. an integer JSON cannot carry): the row's fault.
        return ErrorKind.DATA
    # Everything else, including errors without a SQLSTATE (a refused
    # connection, a timeout) and unexpected classes (a missing table before
    # `migrate`), is retried.
    return ErrorKind.TRANSIENT


def needs_operator(exc: BaseException) -> bool:
    """Whether retrying `exc` cannot help until a person acts: a refused
    login, a missing privilege, table or database (SQLSTATE), or Kafka
    refusing the login or access to a topic, group or the cluster."""
    if sqlstate(exc) in OPERATOR_SQLSTATES:
        return True
    return any(isinstance(e, (*OPERATOR_KAFKA_ERRORS, OperatorNeeded)) for e in _chain(exc))


def describe(exc: BaseException) -> tuple[str, str]:
    """(error class, one-line message) for a dead-letter record."""
    code = sqlstate(exc)
    inner = _chain(exc)[-1]
    message = (str(inner).strip().splitlines() or [""])[0]
    name = type(inner).__name__
    return (f"DatabaseRejected:{name}", f"SQLSTATE {code}: {message}" if code else message)
