"""Commands that run things: the services, migrations, trimming, the local
stack and the load generator.

The last two are development tools (`worker.devtools`), imported by their
commands only: the runtime never loads them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from worker.cli.common import (
    EXIT_BAD_SETTINGS,
    app,
    setup,
    with_engine,
)
from worker.cli.failures import EXIT_REFUSED, EXIT_UNAVAILABLE, DatabaseFailure, Failure
from worker.core.client_logs import collapse_client_logs, sweep_forever
from worker.core.codecs import CodecError, check_codecs
from worker.core.kafka_admin import create_topic
from worker.core.settings import Settings
from worker.core.startup import IMPORTS, SETTINGS, clock, tune_collector
from worker.pipeline.partition_state import names
from worker.pipeline.persister import FlushAbandoned
from worker.services import table_partitions
from worker.services.retention import trim
from worker.services.service import Service

stack_app = typer.Typer(help="A local Kafka + PostgreSQL without Docker.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


async def _run_until_signalled(settings: Settings) -> None:
    client_lines = collapse_client_logs()
    sweeper = asyncio.create_task(sweep_forever(client_lines))
    try:
        await _services_until_signalled(settings)
    finally:
        sweeper.cancel()


def _drain() -> None:
    for service in Service.current:
        service.drain()


async def _services_until_signalled(settings: Settings) -> None:
    task = asyncio.create_task(Service.run_services(settings))
    loop = asyncio.get_running_loop()
    grace_s = settings.shutdown_grace_s

    def stop() -> None:
        if task.cancelling():
            return  # once: a second signal would cut the last flush short
        # The services keep within the grace; this is the promise kept if
        # something in them does not.
        loop.call_later(grace_s, _give_up, grace_s)
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    # Drain: leave the group (flushing and committing first), stay up.
    loop.add_signal_handler(signal.SIGUSR1, _drain)
    try:
        await task
    except asyncio.CancelledError:
        logging.getLogger(__name__).info("stopped by signal")
    except FlushAbandoned as exc:
        raise Failure(
            EXIT_UNAVAILABLE,
            f"stopped by signal; the last flush of {names(exc.args[0])} was abandoned "
            f"within PERSISTER_SHUTDOWN_GRACE_S={grace_s:g}: nothing of it was committed, "
            "the next owner rewrites it",
        ) from None


def _give_up(grace_s: float) -> None:
    logging.getLogger(__name__).error(
        "still stopping after PERSISTER_SHUTDOWN_GRACE_S=%g; exiting now: what was not "
        "flushed is abandoned, nothing of it was committed, the next owner rewrites it",
        grace_s,
    )
    logging.shutdown()
    os._exit(EXIT_UNAVAILABLE)


@app.command()
def run() -> None:
    """Run the enabled services until SIGTERM or SIGINT (then flush and exit 0)."""
    clock.end(IMPORTS)
    settings = setup()
    try:
        check_codecs()
    except CodecError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None
    clock.end(SETTINGS)
    logging.getLogger(__name__).info(
        "starting %s against %s",
        ", ".join(s.name for s in Service.enabled_services(settings)) or "no services",
        settings.redacted_database_url(),
    )
    tune_collector()
    asyncio.run(_run_until_signalled(settings))


@app.command()
def migrate() -> None:
    """Create or upgrade the database tables (Alembic migrations)."""
    # Alembic takes a fifth of a second to import: only this command needs it.
    from schemas.migrate import upgrade
    from schemas.sharing import Refused

    settings = setup()
    try:
        upgrade(settings.database_url, settings.event_tables)
        if settings.event_tables == "persister" and settings.database_url.startswith("postgresql"):
            now = datetime.now(UTC)
            created = asyncio.run(
                with_engine(
                    settings, lambda engine: table_partitions.ensure_for(engine, settings, now)
                )
            )
            typer.echo(f"created {created} partitions of events and event_resources")
    except Refused as exc:
        raise Failure(EXIT_REFUSED, f"refused: {exc}") from None
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise DatabaseFailure(str(exc)) from exc
    typer.echo(f"migrated {settings.redacted_database_url()}")


@app.command("trim")
def trim_command(
    once: Annotated[bool, typer.Option("--once", help="Trim now, once (required).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, delete nothing.")] = False,
) -> None:
    """Delete events older than the retention period, now.

    The elected trimmer does this every PERSISTER_TRIM_EVERY; this is for
    operators."""
    if not once:
        typer.echo(
            "error: trim runs once per call: pass --once (the service trims periodically)",
            err=True,
        )
        raise typer.Exit(EXIT_BAD_SETTINGS)
    settings = setup()

    trimmed = asyncio.run(
        with_engine(settings, lambda engine: trim(engine, settings, None, dry_run=dry_run))
    )
    verb = "would delete" if dry_run else "deleted"
    typer.echo(f"{verb} {trimmed.events} events and {trimmed.resources} resource rows")
    if trimmed.partitions:
        typer.echo(f"dropped {trimmed.partitions} expired partitions of both tables")


@contextlib.contextmanager
def development_tool(command: str) -> Iterator[None]:
    """Around the import of a development tool, which the package leaves out."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("worker.devtools"):
            raise
        line = f"`persister {command}` is a development tool: run it from a source checkout"
        raise Failure(EXIT_REFUSED, line) from None


StateDir = Annotated[
    Path | None, typer.Option(help="Where the stack keeps its data and pid files.")
]


Brokers = Annotated[
    int, typer.Option(min=1, max=9, help="Kafka brokers (3: topics replicated 3 times).")
]


Proxy = Annotated[
    bool,
    typer.Option(
        "--proxy", help="Reach Kafka and PostgreSQL through proxies that `stack net` controls."
    ),
]


@stack_app.command("up")
def stack_up(state_dir: StateDir = None, brokers: Brokers = 1, proxy: Proxy = False) -> None:
    """Start Kafka and PostgreSQL on free loopback ports; print what to export."""
    with development_tool("stack up"):
        from worker.devtools import stack

    where = state_dir or stack.default_state_dir()
    info = stack.stack_up(where, os.environ.get("DATABASE_URL"), brokers, proxy=proxy)
    typer.echo(info.exports(), nl=False)


class NetAction(StrEnum):
    freeze = "freeze"
    heal = "heal"
    reset = "reset"


class NetService(StrEnum):
    kafka = "kafka"
    postgres = "postgres"


@stack_app.command("net")
def stack_net(
    action: Annotated[NetAction, typer.Argument(help="freeze (silent), heal or reset (RST).")],
    service: Annotated[NetService, typer.Argument(help="Whose network.")],
    state_dir: StateDir = None,
) -> None:
    """Make the network to Kafka or PostgreSQL silent (freeze: connections
    stay open, nothing passes), bring it back (heal), or reset every
    connection (reset), on a stack started with --proxy."""
    with development_tool(f"stack net {action} {service}"):
        from worker.devtools import stack

    try:
        state = stack.stack_net(state_dir or stack.default_state_dir(), action, service)
    except stack.StackError as exc:
        raise Failure(EXIT_REFUSED, str(exc)) from None
    typer.echo(f"{service}: {state}")


@stack_app.command("down")
def stack_down(state_dir: StateDir = None) -> None:
    """Stop the local stack and delete its data."""
    with development_tool("stack down"):
        from worker.devtools import stack

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
    with development_tool("produce"):
        from worker.devtools import loadgen
    from rich.progress import Progress  # a tenth of a second: not for `run`

    settings = setup("WARNING")
    name = topic or settings.topics[0]

    async def go() -> int:
        await create_topic(settings.kafka_options(), name, partitions)
        with Progress(transient=False) as progress:
            bar = progress.add_task(f"producing to {name}", total=count)
            return await loadgen.produce(
                settings.kafka_options(),
                name,
                loadgen.messages(count, seed=seed, invalid_every=invalid_every),
                on_sent=lambda n: progress.advance(bar, n),
            )

    sent = asyncio.run(go())
    typer.echo(f"sent {sent} messages to {name}")
