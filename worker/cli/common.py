"""What every `persister` command shares: the app, settings, logging, exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.settings import Settings
from worker.storage import create_engine

app = typer.Typer(help="Persist events from Kafka topics into PostgreSQL.", no_args_is_help=True)

# Exit codes scripts can rely on (1 is an unexpected failure).
EXIT_BAD_SETTINGS = 2
EXIT_REFUSED = 3
T = TypeVar("T")


def load_settings() -> Settings:
    """Validated settings, or one clear line per problem and exit code 2."""
    try:
        return Settings()
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            where = ".".join(map(str, error["loc"])) or "settings"
            typer.echo(f"invalid setting {where}: {error['msg']}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # aiokafka logs every coordinator hiccup at ERROR; ours say what matters.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))


async def with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        return await work(engine)
    finally:
        await engine.dispose()
