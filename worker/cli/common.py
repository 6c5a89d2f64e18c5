"""What every `persister` command shares: the app, settings, logging, and
turning every failure into one line and an exit code (see
`worker.cli.failures`)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import typer
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from pydantic_settings.exceptions import SettingsError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from worker import __version__
from worker.cli.failures import (
    EXIT_BAD_SETTINGS,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_UNEXPECTED,
    DatabaseFailure,
    Failure,
    capture_client_logs,
    explain,
)
from worker.core import database_url
from worker.core.setting_names import (
    describe_errors,
    describe_source_error,
    known_variables,
    unknown_variables,
)
from worker.core.settings import Settings
from worker.pipeline.connections import create_engine

__all__ = [
    "EXIT_BAD_SETTINGS",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "EXIT_UNEXPECTED",
    "Failure",
    "app",
    "explain_line",
    "setup",
    "with_engine",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"persister {__version__}")
        raise typer.Exit(0)


def _flag_type(self: typer.core.TyperOption, ctx: typer.Context) -> str | None:
    return None if self.is_flag else _option_type(self, ctx)


# Typer's help gives every option a type, flags too (`--force <bool>`), as if
# they took a value: a flag is shown without one.
_option_type = typer.core.TyperOption.display_type_rich
setattr(typer.core.TyperOption, "display_type_rich", _flag_type)  # noqa: B010

app = typer.Typer(
    help="Persist events from Kafka topics into PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Persist events from Kafka topics into PostgreSQL."""


T = TypeVar("T")


class _State:
    """What the last `setup` learnt, for putting failures in words."""

    settings: Settings | None = None
    json_logs = False


state = _State()


def load_settings() -> Settings:
    """Validated settings, or one line per problem and exit code 2."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = describe_errors(exc.errors(include_url=False))
    except SettingsError as exc:
        lines = [describe_source_error(str(exc))]
    for line in lines:
        typer.echo(line, err=True)
    raise typer.Exit(EXIT_BAD_SETTINGS)


def setup(level: str | None = None) -> Settings:
    """Settings and logging for a command: `level` None for the services
    (PERSISTER_LOG_LEVEL and _FORMAT apply); operator commands pass
    WARNING and keep the client library's lines out of their output (the
    reason of a failure is in the one line they end with)."""
    settings = load_settings()
    state.settings = settings
    if level is None:
        configure_logging(settings.log_level, settings.log_format)
    else:
        configure_logging(level)
        capture_client_logs()
    for line in unknown_variables(os.environ, known_variables(Settings)):
        logging.getLogger("worker.core.settings").warning("%s", line.removeprefix("warning: "))
    return settings


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers: ISO 8601 UTC time, and the
    fields a line carries (`extra={...}`: topic, partition, offset, ...)."""

    STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in self.STANDARD and not name.startswith("_"):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """Readable lines with an ISO 8601 UTC time."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        time = datetime.fromtimestamp(record.created, UTC)
        return time.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    logging.getLogger("worker").critical("crashed: %r", exc, exc_info=(kind, exc, tb))


def _log_unraisable(unraisable: Any) -> None:
    logging.getLogger("worker").warning(
        "%s: %r", unraisable.err_msg or "exception ignored", unraisable.exc_value
    )


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    state.json_logs = log_format == "json"
    if state.json_logs:
        # Whatever Python itself would print (warnings such as unclosed
        # clients, an exception nothing caught) becomes a line like the rest.
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        sys.unraisablehook = _log_unraisable
    # aiokafka logs every coordinator hiccup at ERROR; ours say what matters.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))


async def with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run `work` with an engine; the database's failures become
    `DatabaseFailure` (Kafka's pass through as they are)."""
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        return await work(engine)
    except KafkaError:
        raise
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise DatabaseFailure(str(exc)) from exc
    finally:
        await engine.dispose()


def explain_line(exc: BaseException) -> str:
    """The one line that says why `exc` happened."""
    settings = state.settings
    servers = settings.kafka_bootstrap_servers if settings else "?"
    database = settings.redacted_database_url() if settings else "?"
    return explain(exc, servers, database, database_url.variable_set(os.environ)).line


def report(exc: BaseException) -> int:
    """Say in one line why the command failed; returns the exit code."""
    settings = state.settings
    servers = settings.kafka_bootstrap_servers if settings else "?"
    database = settings.redacted_database_url() if settings else "?"
    failure = explain(exc, servers, database, database_url.variable_set(os.environ))
    debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    if state.json_logs or (debug and failure.code == EXIT_UNEXPECTED):
        # A log shipper gets JSON to the end; DEBUG gets the traceback.
        exc_info = exc if failure.code == EXIT_UNEXPECTED else None
        logging.getLogger("worker.cli").error("%s", failure.line, exc_info=exc_info)
    else:
        typer.echo(failure.line, err=True)
    return failure.code
