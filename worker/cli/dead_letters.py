"""`persister dlq`: look at dead letters, count them, mark them resolved,
purge them, send them back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.cli.common import (
    EXIT_BAD_SETTINGS,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    app,
    setup,
    with_engine,
)
from worker.core.settings import parse_duration
from worker.operate.dead_letter_admin import (
    Selection,
    SendBackFailed,
    count_dead_letters,
    dead_letter_stats,
    dead_letters_json,
    list_dead_letters,
    oversized,
    purge,
    resolve,
    send_back,
)

if TYPE_CHECKING:
    from rich.table import Table

# rich is imported where a command prints with it: it takes a tenth of a
# second, and every command's module is loaded by `persister run` too.

dlq_app = typer.Typer(
    help="Inspect, count, resolve, purge dead letters and send them back.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")

Group = Annotated[str | None, typer.Option(help="Only this consumer group.")]
Topic = Annotated[str | None, typer.Option(help="Only this source topic.")]
ErrorClass = Annotated[str | None, typer.Option(help="Only this kind of error.")]
Ids = Annotated[list[int] | None, typer.Option("--id", help="Dead letter id (repeatable).")]
WIDE_COLUMNS = 1000
OlderThan = Annotated[
    str | None, typer.Option(help="Only those recorded longer ago than this (90s, 15m, 2h, 7d).")
]


def _state(letter: Row[Any]) -> str:
    if letter.resolved is not None:
        return "resolved"
    return "sent" if letter.published is not None else "-"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def letters_table(letters: list[Row[Any]], title: str, caption: str, wide: bool) -> Table:
    """One line per dead letter. Compact: cut to the terminal's width; wide:
    every field, whole."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False)
    names = ["id", "origin", "error class", "recorded", "state"]
    if wide:
        names[1:1] = ["group"]
        names.insert(4, "error")
    # Only the origin and the error class give way to a narrow terminal.
    whole = {"id": max((len(str(d.id)) for d in letters), default=2), "recorded": 16, "state": 8}
    for name in names:
        table.add_column(name, no_wrap=True, overflow="ellipsis", min_width=whole.get(name))
    for d in letters:
        cells = [str(d.id), f"{d.topic}[{d.partition}]@{d.offset}", d.error_class]
        cells += [_when(d.recorded), _state(d)]
        if wide:
            cells[1:1] = [d.group_id]
            cells.insert(4, d.error)
        table.add_row(*cells)
    return table


@dlq_app.command("list")
def dlq_list(
    group: Group = None,
    topic: Topic = None,
    error_class: ErrorClass = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Resolved ones too (default: unresolved only).")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 20,
    before_id: Annotated[
        int | None, typer.Option(help="Only those older than this id: the next page.")
    ] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Every field, whole.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Dead letters, newest first: where each came from and why it failed."""
    settings = setup("WARNING")
    selection = Selection(group, topic, error_class, resolved=None if everything else False)

    async def go(engine: AsyncEngine) -> tuple[list[Row[Any]], int]:
        letters = await list_dead_letters(engine, selection, limit + 1, before_id)
        return letters, await count_dead_letters(engine, selection)

    letters, total = asyncio.run(with_engine(settings, go))
    more, letters = len(letters) > limit, letters[:limit]
    if as_json:
        typer.echo(dead_letters_json(letters))
        return
    which = "dead letters" if everything else "unresolved dead letters"
    caption = f"newest first, {len(letters)} shown"
    if more:
        caption += f"; older: --before-id {letters[-1].id}"
    from rich.console import Console

    # Wide lines are not cut or wrapped: made for `less -S` and grep.
    console = Console(width=WIDE_COLUMNS) if wide else Console()
    console.print(letters_table(letters, f"{total:,} {which}", caption, wide))


@dlq_app.command("stats")
def dlq_stats(group: Group = None, topic: Topic = None) -> None:
    """How many dead letters there are, by error class and topic."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    settings = setup("WARNING")
    selection = Selection(group, topic, resolved=None)
    stats = asyncio.run(with_engine(settings, lambda e: dead_letter_stats(e, selection)))
    total = sum(s.unresolved + s.resolved for s in stats)
    table = Table(title=f"{total:,} dead letters", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("error class", "topic"):
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    for name in ("unresolved", "resolved"):
        table.add_column(name, justify="right", no_wrap=True)
    for s in stats:
        table.add_row(s.error_class, s.topic, f"{s.unresolved:,}", f"{s.resolved:,}")
    Console().print(table)


def _chosen(
    ids: list[int] | None,
    error_class: str | None,
    older_than: str | None,
    group: str | None,
    topic: str | None,
) -> Selection:
    """The dead letters a resolve or purge is about; naming none is refused
    (it would be all of them)."""
    if not ids and error_class is None and older_than is None:
        raise typer.BadParameter("name the dead letters: --id, --error-class or --older-than")
    age: timedelta | None = None
    if older_than is not None:
        try:
            age = parse_duration(older_than)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--older-than") from None
    return Selection(group, topic, error_class, ids or (), age, resolved=None)


def _apply(
    change: Callable[[AsyncEngine, Selection], Awaitable[int]], done: str, selection: Selection
) -> None:
    settings = setup("WARNING")
    n = asyncio.run(with_engine(settings, lambda engine: change(engine, selection)))
    typer.echo(f"{done} {n} dead letters")


@dlq_app.command("resolve")
def dlq_resolve(
    ids: Ids = None,
    error_class: ErrorClass = None,
    older_than: OlderThan = None,
    group: Group = None,
    topic: Topic = None,
) -> None:
    """Mark dead letters dealt with: `dlq list` leaves them out (`--all` shows them)."""
    _apply(resolve, "resolved", _chosen(ids, error_class, older_than, group, topic))


@dlq_app.command("purge")
def dlq_purge(
    ids: Ids = None,
    error_class: ErrorClass = None,
    older_than: OlderThan = None,
    group: Group = None,
    topic: Topic = None,
) -> None:
    """Delete dead letters, resolved or not (those not yet sent to the
    dead-letter topic are then never sent)."""
    _apply(purge, "purged", _chosen(ids, error_class, older_than, group, topic))


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[list[int], typer.Option("--id", help="Dead letter id (repeatable).")],
    value_file: Annotated[
        Path | None, typer.Option(help="Send this fixed value instead (one --id only).")
    ] = None,
) -> None:
    """Send dead letters back to their topic and partition, e.g. after a fix.

    Exit codes: 0 sent, 4 Kafka failed (one line), 2 bad arguments or no such
    id, 3 refused: a value larger than PERSISTER_MAX_MESSAGE_BYTES (nothing is
    sent), or one its topic refuses as too large (nothing after it is sent)."""
    if value_file is not None and len(ids) != 1:
        raise typer.BadParameter("--value-file goes with exactly one --id")
    value = value_file.read_bytes() if value_file is not None else None
    settings = setup("WARNING")
    letters = asyncio.run(
        with_engine(
            settings, lambda e: list_dead_letters(e, Selection(ids=ids, resolved=None), len(ids))
        )
    )
    missing = sorted(set(ids) - {d.id for d in letters})
    if missing:
        typer.echo(f"error: no dead letter with id {', '.join(map(str, missing))}", err=True)
        raise typer.Exit(EXIT_BAD_SETTINGS)
    if too_large := oversized(letters, value, settings.max_message_bytes):
        listed = ", ".join(f"{letter_id} ({size} bytes)" for letter_id, size in too_large)
        which = f"dead letter {listed} is" if len(too_large) == 1 else f"dead letters {listed} are"
        typer.echo(
            f"refused: {which} larger than PERSISTER_MAX_MESSAGE_BYTES="
            f"{settings.max_message_bytes} and would be dead-lettered again; raise it "
            "(for the workers too) or send a smaller --value-file",
            err=True,
        )
        raise typer.Exit(EXIT_REFUSED)
    try:
        sent = asyncio.run(send_back(settings, letters, value))
    except SendBackFailed as exc:
        if exc.too_large:
            typer.echo(f"refused: {exc}; raise the topic's max.message.bytes", err=True)
            raise typer.Exit(EXIT_REFUSED) from None
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    typer.echo(f"sent {sent} dead letters back to their topics")
