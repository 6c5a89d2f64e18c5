"""`python -m worker.devtools.bench.growth`: write speed as the tables fill, for the
current (partitioned) schema and the previous (unpartitioned) one.

One throwaway PostgreSQL server on the current settings (the previous
schema's steps switch it to the defaults, as in `make bench`). The same
events are written into both, in steps of `--step` events, alternating
schema each step so that both see the same machine: asyncpg COPY, 10,000
events per transaction, `occurred` advancing `--per-day` events per
simulated day. Before each step of the current schema the leader's trim
runs as the worker runs it (`worker.services.retention.trim`: partitions ahead,
expired ones dropped); the previous schema is trimmed as it used to be, row
by row in batches each from the oldest row (`reference.delete_from_oldest`).
After each step: rows stored, table and index sizes, dead tuples and the
disk used.

No Kafka: this measures the storage, not the worker (`make bench` does).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Column, MetaData, Table, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from schemas.tables import event_resources, events
from worker.core.settings import Settings
from worker.devtools.bench import ceilings, db, reference, server
from worker.devtools.bench.dataset import CopyChunk, copy_chunks, make_dataset, with_fresh_ids
from worker.devtools.bench.growth_report import write_chart
from worker.devtools.bench.results import write_steps
from worker.devtools.bench.server import ServerCpu
from worker.services import retention

log = logging.getLogger(__name__)

COPY_CHUNK_EVENTS = 10_000
CURRENT = "current (partitioned)"
PREVIOUS = "previous (unpartitioned)"

SIZES_SQL = """
SELECT coalesce(sum(pg_table_size(c.oid)), 0), coalesce(sum(pg_indexes_size(c.oid)), 0),
       coalesce(sum(s.n_dead_tup), 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind = 'r' AND n.nspname = $1
  AND (c.relname LIKE 'events%' OR c.relname LIKE 'event_resources%')
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.devtools.bench.growth", description=__doc__
    )
    parser.add_argument("--target", type=int, default=10_000_000, help="events stored to reach")
    parser.add_argument("--step", type=int, default=100_000, help="events per step")
    parser.add_argument("--per-day", type=int, default=2_500_000, help="events per simulated day")
    parser.add_argument("--retention-days", type=float, default=4.0, help="simulated retention")
    parser.add_argument(
        "--previous-target",
        type=int,
        default=None,
        help="stop writing the previous schema once it holds this many (default: --target)",
    )
    parser.add_argument(
        "--days-after",
        type=float,
        default=1.0,
        help="simulated days written after --target is reached: each drops a partition",
    )
    parser.add_argument("--minutes", type=float, default=0, help="stop after this long (0: never)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output dir")
    args = parser.parse_args(argv)
    if args.target > args.per_day * args.retention_days:
        # The trim keeps per-day x retention-days events: the target would never be reached.
        parser.error("--target must be at most --per-day x --retention-days")
    return args


def previous_tables() -> tuple[Table, Table]:
    """The previous schema's tables, for `reference.delete_from_oldest`."""
    metadata = MetaData(schema=reference.SCHEMA)
    return tuple(  # type: ignore[return-value]
        Table(t.name, metadata, *[Column(c.name, c.type) for c in t.columns])
        for t in (event_resources, events)
    )


async def trim_previous(engine: AsyncEngine, cutoff: datetime) -> int:
    """Row by row, as the previous trimmer did; returns the events deleted."""
    deleted = 0
    async with async_sessionmaker(engine)() as session:
        for table in previous_tables():
            deleted = await reference.delete_from_oldest(session, table, table.c.occurred < cutoff)
    return deleted


async def trim(engine: AsyncEngine, schema: str, now: datetime, days: float) -> dict[str, Any]:
    """The trim of `schema` at simulated `now`: what it removed and took."""
    cutoff = now - timedelta(days=days)
    started = time.monotonic()
    if schema != "public":
        deleted = await trim_previous(engine, cutoff)
        return {"trim_seconds": round(time.monotonic() - started, 3), "events_deleted": deleted}
    async with engine.connect() as conn:
        # The events the trim will remove, dropped or deleted: an index range.
        expired = select(func.count()).select_from(events).where(events.c.occurred < cutoff)
        deleted = int((await conn.execute(expired)).scalar_one())
    started = time.monotonic()
    trimmed = await retention.trim(engine, Settings(retention=timedelta(days=days)), None, now=now)
    return {
        "trim_seconds": round(time.monotonic() - started, 3),
        "events_deleted": deleted,
        "partitions_dropped": trimmed.partitions,
        "rows_deleted_one_by_one": trimmed.events + trimmed.resources,
    }


async def sizes(conn: db.Connection, schema: str) -> dict[str, int]:
    table, index, dead = await conn.fetchrow(SIZES_SQL, schema)
    return {"table_bytes": int(table), "index_bytes": int(index), "dead_tuples": int(dead)}


async def copy_step(url: str, schema: str, chunks: list[CopyChunk]) -> dict[str, Any]:
    """COPY one step into `schema`; its rate, server CPU and the sizes after."""
    async with db.connect(url) as conn:
        cpu = await ServerCpu.of(conn)
        before = cpu.seconds()
        seconds = await ceilings.copy(conn, chunks, schema)
        server_cpu = cpu.seconds() - before
        found = await sizes(conn, schema)
    written = sum(map(len, chunks))
    return {
        "events_per_s": round(written / seconds, 1),
        "server_cpu_s_per_10k": round(server_cpu / written * 10_000, 3),
        **found,
    }


async def run(url: str, args: argparse.Namespace, stack_dir: Path) -> list[dict[str, Any]]:
    """Steps until both schemas have held `--target` events and then been
    written `--days-after` more simulated days, trimming as they go (or
    `--minutes` pass)."""
    made_at = datetime.now(UTC)
    base = copy_chunks(make_dataset(args.step).events, made_at, COPY_CHUNK_EVENTS)
    engine = create_async_engine(url)
    async with db.connect(url) as conn:
        await reference.create(conn)
    origin = made_at - timedelta(days=60)
    stored = {"public": 0, reference.SCHEMA: 0}
    written = 0
    stop_at = time.monotonic() + args.minutes * 60 if args.minutes else float("inf")
    steps: list[dict[str, Any]] = []
    try:
        end = args.target + args.days_after * args.per_day
        while written < end and time.monotonic() < stop_at:
            n = written // args.step
            now = origin + timedelta(days=(n + 1) * args.step / args.per_day)
            chunks = with_fresh_ids(base, now - made_at)
            # Alternating which goes first, so neither always follows the other.
            order = ["public", reference.SCHEMA][:: 1 if n % 2 == 0 else -1]
            previous_done = stored[reference.SCHEMA] >= (args.previous_target or args.target)
            for schema in order:
                if schema == reference.SCHEMA and previous_done:
                    continue
                trimmed = await trim(engine, schema, now, args.retention_days)
                copied = await _copy(url, schema, chunks)
                stored[schema] += sum(map(len, chunks)) - trimmed["events_deleted"]
                row = {"step": n, "schema": _label(schema), "events_stored": stored[schema]}
                steps.append(row | trimmed | copied | {"disk_bytes": _du(stack_dir)})
                log.info("%s", steps[-1])
            written += args.step
            write_steps(args, "growth.json", steps)
    finally:
        await engine.dispose()
    return steps


async def _copy(url: str, schema: str, chunks: list[CopyChunk]) -> dict[str, Any]:
    if schema == "public":
        return await copy_step(url, schema, chunks)
    await server.apply(url, server.DEFAULT_SETTINGS)
    try:
        return await copy_step(url, schema, chunks)
    finally:
        await server.apply(url, server.CURRENT_SETTINGS)


def _label(schema: str) -> str:
    return CURRENT if schema == "public" else PREVIOUS


def _du(path: Path) -> int:
    """Bytes under `path` (PostgreSQL's data and WAL, Kafka's log)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with server.fresh("persister-bench-growth-") as (url, stack_dir):
        steps = asyncio.run(run(url, args, stack_dir))
    path = write_steps(args, "growth.json", steps)
    print(f"wrote {path}")
    if chart := write_chart(steps, args.out):
        print(f"wrote {chart}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
