"""Every way a command can fail, as one line on stderr and an exit code.

Exit codes:

- 0 done;
- 1 an unexpected failure (a bug: one line; `PERSISTER_LOG_LEVEL=DEBUG`
  adds the traceback);
- 2 bad settings or arguments (nothing was connected to);
- 3 refused (the command would do harm, or could not do what was asked);
- 4 Kafka or the database cannot be used: unreachable, credentials refused,
  the database or its tables missing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from aiokafka.errors import KafkaConnectionError, KafkaError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from worker.core import database_url
from worker.core.errors import OperatorNeeded
from worker.pipeline.event_tables import Unwritable
from worker.services.service import CannotStart

EXIT_UNEXPECTED = 1
EXIT_BAD_SETTINGS = 2
EXIT_REFUSED = 3
EXIT_UNAVAILABLE = 4


class Failure(Exception):
    """A failure already put in words, with its exit code."""

    def __init__(self, code: int, line: str) -> None:
        super().__init__(line)
        self.code = code
        self.line = line


class DatabaseFailure(Exception):
    """The database could not be used (wraps what the driver raised)."""


@dataclass
class LastClientError:
    """The client library's last WARNING or ERROR line: it says why a
    connection failed (a refused login) when the raised error only says
    that it did."""

    message: str | None = None


last_client_error = LastClientError()


class _Remember(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        last_client_error.message = record.getMessage()


def capture_client_logs() -> None:
    """Keep aiokafka's lines from the terminal, remembering the last one."""
    client = logging.getLogger("aiokafka")
    client.handlers = [_Remember(logging.WARNING)]
    client.propagate = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def kafka_line(exc: KafkaError, servers: str) -> str:
    reason = last_client_error.message or ""
    if "Authentication failed" in reason or "SaslAuthenticationFailed" in reason:
        return (
            f"Kafka refused the login at {servers}: {reason.split(': ', 1)[-1]}; check "
            "PERSISTER_KAFKA_SASL_USERNAME, PERSISTER_KAFKA_SASL_PASSWORD and "
            "PERSISTER_KAFKA_SASL_MECHANISM"
        )
    if isinstance(exc, KafkaConnectionError):
        return (
            f"Kafka is unreachable at {servers}; check KAFKA_BOOTSTRAP_SERVERS, "
            "PERSISTER_KAFKA_SECURITY_PROTOCOL and that the brokers run"
        )
    return (
        f"Kafka at {servers} failed: {type(exc).__name__}: {_first_line(exc)}; check the "
        "brokers, then try again"
    )


def database_line(exc: BaseException, where: str, variable: str = database_url.VARIABLES) -> str:
    """The line for a database failure; `variable`: what the URL was read from."""
    cause = exc.__cause__ or exc
    several = database_url.tried(where)
    where = database_url.shown(where)
    if several and (isinstance(cause, OSError | TimeoutError) or _no_host_matched(cause)):
        return _no_host_line(cause, where, several, variable)
    if isinstance(cause, DBAPIError) and cause.orig is not None:
        text = _first_line(cause.orig)
        # "(sqlalchemy.dialects.postgresql.asyncpg.Error) <the server's words>"
        text = text.split(") ", 1)[1] if text.startswith("(") and ") " in text else text
        if "relation" in text and "does not exist" in text:
            return f"database {where}: {text}; run `persister migrate`"
        return f"database {where} refused: {text}; check {variable}"
    if isinstance(cause, OSError | TimeoutError):
        return (
            f"database {where} is unreachable ({type(cause).__name__}: {_first_line(cause)}); "
            f"check {variable} and that PostgreSQL runs"
        )
    return f"database {where} failed: {type(cause).__name__}: {_first_line(cause)}"


def _no_host_matched(cause: BaseException) -> bool:
    """asyncpg's TargetServerAttributeNotMatched, as SQLAlchemy wraps it."""
    orig = getattr(cause, "orig", None)
    return "None of the hosts match the target attribute" in str(orig or cause)


def _no_host_line(cause: BaseException, where: str, hosts: list[str], variable: str) -> str:
    """The driver tried each host in turn, and raised the last one's error:
    name them all."""
    tried = ", ".join(hosts)
    if isinstance(cause, OSError | TimeoutError):
        why = f"the last error: {type(cause).__name__}: {_first_line(cause)}"
    else:
        why = "each answered, none as target_session_attrs asks (a standby?)"
    return (
        f"database {where}: no host could be used (tried {tried} in turn; {why}); "
        f"check {variable} and that its primary runs"
    )


def usage_line(message: str, command_path: str) -> str:
    """A usage error as one line: the parser's sentences (`No such command
    'x'.`, `Did you mean 'y'?`) made one clause, any hint after the first in
    parentheses, and where the help is."""
    sentences = re.split(r"(?<=[.?!])\s+(?=[A-Z])", " ".join(message.split()))
    first, *hints = [_clause(s) for s in sentences if s]
    hint = f" ({'; '.join(hints)})" if hints else ""
    return f"error: {first}{hint}; see `{command_path} --help`"


def _clause(sentence: str) -> str:
    """`No such command 'x'.` -> `no such command 'x'` (an acronym keeps its
    capitals; a question keeps its mark)."""
    text = sentence.removesuffix(".")
    text = text.replace(": Value error, ", ": ")
    if text[:1].isupper() and not text[1:2].isupper():
        text = text[0].lower() + text[1:]
    return text


def explain(
    exc: BaseException,
    kafka_servers: str,
    database: str,
    variable: str = database_url.VARIABLES,
) -> Failure:
    """The one line and exit code for `exc`; `variable`: what the database
    URL was read from."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, Unwritable):
        return Failure(EXIT_REFUSED, str(exc))
    if isinstance(exc, CannotStart):
        return Failure(EXIT_BAD_SETTINGS, str(exc))
    if isinstance(exc, OperatorNeeded):
        return Failure(EXIT_UNAVAILABLE, str(exc))
    if isinstance(exc, KafkaError):
        return Failure(EXIT_UNAVAILABLE, kafka_line(exc, kafka_servers))
    if isinstance(exc, DatabaseFailure | SQLAlchemyError):
        return Failure(EXIT_UNAVAILABLE, database_line(exc, database, variable))
    return Failure(
        EXIT_UNEXPECTED,
        f"unexpected failure: {type(exc).__name__}: {_first_line(exc)} "
        "(PERSISTER_LOG_LEVEL=DEBUG shows where)",
    )
