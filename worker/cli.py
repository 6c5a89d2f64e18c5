"""The `persister` command line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.progress import Progress
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.migrate import upgrade
from worker import loadgen, stack
from worker.dead_letter_admin import dead_letters_json, list_dead_letters, send_back
from worker.kafka_admin import KafkaView
from worker.replay import Move, ReplayRefused, Target, apply, plan
from worker.retention import Trimmed, trim
from worker.services import RetentionTrimmer, Service
from worker.settings import Settings, parse_duration
from worker.status import Status, gather
from worker.status_view import status_json, status_table
from worker.storage import create_engine

app = typer.Typer(help="Persist events from Kafka topics into PostgreSQL.", no_args_is_help=True)
stack_app = typer.Typer(help="A local Kafka + PostgreSQL without Docker.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")

EXIT_BAD_SETTINGS = 2
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


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiokafka logs every coordinator hiccup at ERROR; ours say what matters.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))


async def _run_until_signalled(settings: Settings) -> None:
    task = asyncio.create_task(Service.run_services(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        logging.getLogger(__name__).info("stopped by signal")


@app.command()
def run() -> None:
    """Run the enabled services until SIGTERM or SIGINT (then flush and exit 0)."""
    settings = load_settings()
    configure_logging(settings.log_level)
    logging.getLogger(__name__).info(
        "starting %s against %s",
        ", ".join(s.name for s in Service.enabled_services(settings)) or "no services",
        settings.redacted_database_url(),
    )
    asyncio.run(_run_until_signalled(settings))


@app.command()
def migrate() -> None:
    """Create or upgrade the database tables (Alembic migrations)."""
    settings = load_settings()
    configure_logging(settings.log_level)
    upgrade(settings.database_url)
    typer.echo(f"migrated {settings.redacted_database_url()}")


@app.command("trim")
def trim_command(
    once: Annotated[bool, typer.Option("--once", help="Trim now, once (required).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, delete nothing.")] = False,
) -> None:
    """Delete events older than the retention period (the leader does this
    every PERSISTER_TRIM_EVERY; this is for operators)."""
    if not once:
        typer.echo(
            "trim runs once per call: pass --once (the service trims periodically)", err=True
        )
        raise typer.Exit(EXIT_BAD_SETTINGS)
    settings = load_settings()
    configure_logging(settings.log_level)

    async def go() -> Trimmed:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            return await trim(engine, settings, lease=None, dry_run=dry_run)
        finally:
            await engine.dispose()

    trimmed = asyncio.run(go())
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {trimmed.events} events and {trimmed.resources} resource rows")


EXIT_REFUSED = 3


def replay_target(
    to_earliest: bool, to_offset: int | None, to_timestamp: str | None, by_duration: str | None
) -> Target:
    """Exactly one of the four options, checked and parsed."""
    given = [to_earliest, to_offset is not None, to_timestamp is not None, by_duration is not None]
    if sum(given) != 1:
        raise typer.BadParameter(
            "give exactly one of --to-earliest, --to-offset, --to-timestamp, --by-duration"
        )
    if to_timestamp is not None:
        try:
            when = datetime.fromisoformat(to_timestamp)
        except ValueError:
            raise typer.BadParameter(f"--to-timestamp {to_timestamp!r} is not ISO 8601") from None
        return Target(timestamp=when if when.tzinfo else when.replace(tzinfo=UTC))
    if by_duration is not None:
        try:
            return Target(timestamp=datetime.now(UTC) - parse_duration(by_duration))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return Target(earliest=to_earliest, offset=to_offset)


@app.command()
def replay(
    group: Annotated[str, typer.Option(help="The consumer group.")],
    topic: Annotated[str, typer.Option(help="The topic to replay.")],
    partition: Annotated[int | None, typer.Option(help="Only this partition.")] = None,
    to_earliest: Annotated[bool, typer.Option("--to-earliest", help="From the start.")] = False,
    to_offset: Annotated[int | None, typer.Option(help="From this offset.")] = None,
    to_timestamp: Annotated[
        str | None, typer.Option(help="From this time (ISO 8601; no zone: UTC).")
    ] = None,
    by_duration: Annotated[str | None, typer.Option(help="From this long ago (2h, 1d).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show, change nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Even with live members.")] = False,
) -> None:
    """Move a group's positions (in the database and in Kafka) to re-read a topic.

    Exit codes: 0 moved (or shown with --dry-run), 2 bad arguments, 3 refused
    because the group has live members (stop the workers, or --force)."""
    target = replay_target(to_earliest, to_offset, to_timestamp, by_duration)
    settings = load_settings()
    configure_logging("WARNING")

    async def go() -> list[Move]:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            async with KafkaView.open(settings) as view:
                moves = await plan(view, engine, group, topic, partition, target)
                if not dry_run:
                    await apply(view, engine, group, topic, moves, force)
                return moves
        finally:
            await engine.dispose()

    try:
        moves = asyncio.run(go())
    except ReplayRefused as exc:
        typer.echo(f"refused: {exc}; stop the workers first, or pass --force", err=True)
        raise typer.Exit(EXIT_REFUSED) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None
    show_moves(group, topic, moves, dry_run)


def show_moves(group: str, topic: str, moves: list[Move], dry_run: bool) -> None:
    title = f"{'would move' if dry_run else 'moved'} group {group!r} on {topic!r}"
    table = Table(title=title)
    for column in ("partition", "stored (before)", "Kafka committed (before)", "after", "re-read"):
        table.add_column(column, justify="right")
    for m in moves:
        cells = [m.partition, m.stored, m.committed, m.target, m.events]
        table.add_row(*("-" if v is None else str(v) for v in cells))
    Console().print(table)


@app.command()
def status(
    group: Annotated[str | None, typer.Option(help="Default: PERSISTER_GROUP_ID.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every 2 s.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Per partition: stored offset, Kafka committed offset, log end, lag and
    last flush; the group's members; who leads the trimmer; dead letters."""
    settings = load_settings()
    configure_logging("WARNING")
    name = group or settings.group_id

    async def once() -> Status:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            async with KafkaView.open(settings) as view:
                return await gather(
                    view, engine, name, list(settings.topics), RetentionTrimmer.lease_name
                )
        finally:
            await engine.dispose()

    if as_json:
        typer.echo(status_json(asyncio.run(once())))
        return
    if not watch:
        Console().print(status_table(asyncio.run(once())))
        return
    with Live(status_table(asyncio.run(once())), auto_refresh=False) as live:
        try:
            while True:
                time.sleep(2)
                live.update(status_table(asyncio.run(once())), refresh=True)
        except KeyboardInterrupt:
            pass


dlq_app = typer.Typer(help="Inspect dead letters and send them back.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


@dlq_app.command("list")
def dlq_list(
    group: Annotated[str | None, typer.Option(help="Only this group.")] = None,
    topic: Annotated[str | None, typer.Option(help="Only this source topic.")] = None,
    error_class: Annotated[str | None, typer.Option(help="Only this kind of error.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Dead letters, oldest first: where each came from and why it failed."""
    settings = load_settings()
    configure_logging("WARNING")
    letters = asyncio.run(
        with_engine(
            settings,
            lambda engine: list_dead_letters(engine, group, topic, error_class, limit=limit),
        )
    )
    if as_json:
        typer.echo(dead_letters_json(letters))
        return
    table = Table(title=f"{len(letters)} dead letters")
    for column in ("id", "topic", "partition", "offset", "error class", "error", "sent to topic"):
        table.add_column(column)
    for d in letters:
        sent = d.published.strftime("%Y-%m-%d %H:%M:%S") if d.published else "-"
        cells = (d.id, d.topic, d.partition, d.offset, d.error_class, d.error[:80], sent)
        table.add_row(*map(str, cells))
    Console().print(table)


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[list[int], typer.Option("--id", help="Dead letter id (repeatable).")],
    value_file: Annotated[
        Path | None, typer.Option(help="Send this fixed value instead (one --id only).")
    ] = None,
) -> None:
    """Send dead letters back to their topic and partition, e.g. after a fix."""
    if value_file is not None and len(ids) != 1:
        raise typer.BadParameter("--value-file goes with exactly one --id")
    value = value_file.read_bytes() if value_file is not None else None
    settings = load_settings()
    configure_logging("WARNING")
    letters = asyncio.run(with_engine(settings, lambda e: list_dead_letters(e, ids=ids)))
    missing = sorted(set(ids) - {d.id for d in letters})
    if missing:
        typer.echo(f"error: no dead letter with id {', '.join(map(str, missing))}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS)
    sent = asyncio.run(send_back(settings, letters, value))
    typer.echo(f"sent {sent} dead letters back to their topics")


async def with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        return await work(engine)
    finally:
        await engine.dispose()


StateDir = Annotated[
    Path | None, typer.Option(help="Where the stack keeps its data and pid files.")
]


@stack_app.command("up")
def stack_up(state_dir: StateDir = None) -> None:
    """Start Kafka and PostgreSQL on free loopback ports; print what to export."""
    info = stack.stack_up(state_dir or stack.default_state_dir(), os.environ.get("DATABASE_URL"))
    typer.echo(info.exports(), nl=False)


@stack_app.command("down")
def stack_down(state_dir: StateDir = None) -> None:
    """Stop the local stack and delete its data."""
    if not stack.stack_down(state_dir or stack.default_state_dir()):
        typer.echo("no local stack was running")


@app.command()
def produce(
    count: Annotated[int, typer.Option(min=1, help="How many messages.")] = 10_000,
    topic: Annotated[
        str | None, typer.Option(help="Default: the first of PERSISTER_TOPICS.")
    ] = None,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions if the topic is new.")] = 4,
    invalid_every: Annotated[
        int, typer.Option(min=0, help="Make every Nth message a bad one (0: none).")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Random seed, for repeatable data.")] = 0,
) -> None:
    """Send realistic events (and optionally bad messages) to a topic."""
    settings = load_settings()
    name = topic or settings.topics[0]

    async def go() -> int:
        await loadgen.ensure_topic(settings.kafka_bootstrap_servers, name, partitions)
        with Progress(transient=False) as progress:
            bar = progress.add_task(f"producing to {name}", total=count)
            return await loadgen.produce(
                settings.kafka_bootstrap_servers,
                name,
                loadgen.messages(count, seed=seed, invalid_every=invalid_every),
                on_sent=lambda n: progress.advance(bar, n),
            )

    sent = asyncio.run(go())
    typer.echo(f"sent {sent} messages to {name}")
