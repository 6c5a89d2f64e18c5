"""Commands on a group's positions: `status` shows where the group stands,
`replay` moves it back to read again (dead letters: `worker.cli.dead_letters`;
pause and resume: `worker.cli.control`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.cli.common import (
    EXIT_BAD_SETTINGS,
    EXIT_REFUSED,
    app,
    explain_line,
    setup,
    with_engine,
)
from worker.core.kafka_admin import KafkaView
from worker.core.settings import parse_duration
from worker.operate.replay import Move, ReplayRefused, Target, apply, followed, plan
from worker.operate.status import Status, consumed_topics, gather
from worker.pipeline.database_wait import ping
from worker.services.retention_trimmer import RetentionTrimmer

if TYPE_CHECKING:
    from rich.console import RenderableType

# rich (and the status view, which uses it) is imported where a command
# prints with it: it takes a tenth of a second, and every command's module is
# loaded by `persister run` too.

# How long `replay --force` waits for the live workers' Kafka commits.
FOLLOW_TIMEOUT_S = 10.0


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
    topic: Annotated[str, typer.Option(help="The topic to replay.")],
    group: Annotated[str | None, typer.Option(help="Default: PERSISTER_GROUP_ID.")] = None,
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
    settings = setup("WARNING")
    group = group or settings.group_id

    async def go(engine: AsyncEngine) -> tuple[list[Move], int, dict[int, int] | None]:
        await ping(engine)  # the truth first: nothing is asked of Kafka without it
        async with KafkaView.open(settings) as view:
            moves = await plan(view, engine, group, topic, partition, target)
            if dry_run:
                return moves, 0, None
            live = await apply(view, engine, group, topic, moves, force)
            return moves, live, await followed(view, group, topic, moves, FOLLOW_TIMEOUT_S)

    try:
        moves, live, after = asyncio.run(with_engine(settings, go))
    except ReplayRefused as exc:
        typer.echo(f"refused: {exc}; stop the workers first, or pass --force", err=True)
        raise typer.Exit(EXIT_REFUSED) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS) from None
    show_moves(group, topic, moves, after)
    if live:
        behind = [m.partition for m in moves if (after or {}).get(m.partition) != m.target]
        typer.echo(
            f"{live} live members were told to reload; "
            + (
                "each has committed the new offsets to Kafka"
                if not behind
                else f"Kafka's committed offsets of partitions {behind} do not follow yet "
                "(a worker commits them once it owns and reloads the partition)"
            )
        )


def show_moves(group: str, topic: str, moves: list[Move], after: dict[int, int] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    title = f"{'would move' if after is None else 'moved'} group {group!r} on {topic!r}"
    table = Table(title=title)
    columns = ["partition", "stored (before)", "Kafka committed (before)", "stored (after)"]
    columns += ["re-read"] + ([] if after is None else ["Kafka committed (after)"])
    for column in columns:
        table.add_column(column, justify="right")
    for m in moves:
        cells = [m.partition, m.stored, m.committed, m.target, m.events]
        if after is not None:
            cells.append(after.get(m.partition))
        table.add_row(*("-" if v is None else str(v) for v in cells))
    Console(width=max(100, Console().width)).print(table)


@app.command()
def status(
    group: Annotated[str | None, typer.Option(help="Default: PERSISTER_GROUP_ID.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every 2 s.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Where the group stands, like `kafka-consumer-groups --describe`.

    Per partition: the member that owns it (`<host>:<pid>` by default), the
    stored offset (where workers resume), Kafka's committed offset, the log
    end, the lag and the last flush; the trimmer leader; dead letters.
    Exit 3 for a group nothing knows. `--watch` goes on through outages of
    Kafka or the database, showing them under the last table."""
    from rich.console import Console

    from worker.operate.status_view import status_json, status_table

    settings = setup("WARNING")
    name = group or settings.group_id

    async def gather_with(engine: AsyncEngine) -> Status:
        async with KafkaView.open(settings) as view:
            topics = await consumed_topics(view, settings)
            return await gather(view, engine, name, topics, RetentionTrimmer.lease_name)

    def once() -> Status:
        return asyncio.run(with_engine(settings, gather_with))

    if watch:
        watch_status(once)
        return
    found = once()
    if not found.known:
        typer.echo(
            f"group {name!r} is unknown: no members, no stored or committed offsets "
            "(check --group or PERSISTER_GROUP_ID)",
            err=True,
        )
        raise typer.Exit(EXIT_REFUSED)
    if as_json:
        typer.echo(status_json(found))
    else:
        Console().print(status_table(found))


def watch_status(once: Callable[[], Status]) -> None:
    """Refresh every 2 s until Ctrl-C; a failure shows, with the time it
    began, under the last table that could be gathered."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from worker.operate.status_view import status_table

    shown: RenderableType = Text("gathering...")
    failing_since: datetime | None = None
    with Live(shown, auto_refresh=False) as live:
        try:
            while True:
                try:
                    shown, failing_since = status_table(once()), None
                    live.update(shown, refresh=True)
                except Exception as exc:  # any failure of either dependency
                    failing_since = failing_since or datetime.now(UTC)
                    line = explain_line(exc)
                    since = failing_since.strftime("%H:%M:%S")
                    problem = Text(f"since {since} UTC: {line}; retrying", style="bold red")
                    live.update(Group(shown, problem), refresh=True)
                time.sleep(2)
        except KeyboardInterrupt:
            pass
