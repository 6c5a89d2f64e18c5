"""`python -m worker.devtools.bench.retention`: the retention trim dropping a day of
expired events while a worker ingests.

One throwaway stack: a day partition, wholly older than the retention
period, filled with `--expired` events; a topic loaded with a backlog; one
worker (its own trimmer off) draining it. Once the worker runs at full
speed, the trim the leader runs (`worker.services.retention.trim`, with a lease)
drops the expired day. Reported: the drop's time, in all and step by step
(the detach, then each index and table removed, with pauses between), the
ingest rate in the seconds before the trim, over the whole drop and in the
seconds after it, and the dead tuples and deleted rows of the tables
afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from schemas.migrate import upgrade
from schemas.table_partitions import PARTITIONED, Range, floor, partition_name
from worker.core import leader
from worker.core.kafka_admin import create_topic
from worker.core.settings import Settings
from worker.devtools.bench import db, topics
from worker.devtools.bench.context import PARTITIONS
from worker.devtools.bench.dataset import make_values
from worker.devtools.bench.preload import preload
from worker.devtools.bench.server import ServerCpu
from worker.devtools.bench.workers import Replicas
from worker.devtools.stack import LocalStack, StackInfo
from worker.services import retention, table_partitions

log = logging.getLogger(__name__)

TOPIC = "bench-retention"
WINDOW_S = 10.0
# Writing into an empty day partition gets slower for the first million or
# so events (see the growth benchmark); the drop waits until that is over,
# and a window after it shows what the rate does without one.
WARM_UP_S = 40.0
SAMPLE_S = 0.1
RETENTION = timedelta(days=7)
DAY = timedelta(days=1)

STATS_SQL = """
SELECT coalesce(sum(n_dead_tup), 0), coalesce(sum(n_tup_del), 0), count(*)
FROM pg_stat_user_tables
WHERE relname LIKE 'events%' OR relname LIKE 'event_resources%'
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.devtools.bench.retention", description=__doc__
    )
    parser.add_argument("--expired", type=int, default=5_000_000, help="events in the expired day")
    # Enough that the worker is still busy with it when the window after the
    # paced drop ends (it writes about 20,000 events/s on two cores).
    parser.add_argument("--events", type=int, default=3_000_000, help="backlog in the topic")
    parser.add_argument(
        "--pause-factor",
        type=float,
        default=table_partitions.PAUSE_FACTOR,
        help="pause after each step of the drop, times the step's own time (0: no pauses)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output dir")
    return parser.parse_args(argv)


class Progress:
    """Samples the events the worker has stored (its stored offsets) over time."""

    def __init__(self, replicas: Replicas) -> None:
        self.replicas = replicas
        self.samples: list[tuple[float, int]] = []

    async def run(self, conn: db.Connection, topic: str) -> None:
        while True:
            offsets = await db.stored_offsets(conn, self.replicas.group_id, topic)
            self.samples.append((time.monotonic(), sum(offsets.values())))
            await asyncio.sleep(SAMPLE_S)

    def at(self, moment: float) -> int:
        """Events stored at `moment` (the last sample at or before it)."""
        return max((n for t, n in self.samples if t <= moment), default=0)

    def rate(self, start: float, end: float) -> float:
        return (self.at(end) - self.at(start)) / (end - start)


async def fill_expired(url: str, engine: AsyncEngine, count: int) -> tuple[datetime, float]:
    """`count` events in one day partition that ended more than RETENTION ago."""
    start = floor(datetime.now(UTC) - RETENTION, DAY) - 2 * DAY
    await table_partitions.ensure(engine, start, start + DAY, DAY)
    async with db.connect(url) as conn:
        seconds = await preload(conn, "public", count, start, start + DAY)
        await conn.execute("VACUUM ANALYZE events, event_resources")
    return start, seconds


async def measure(info: StackInfo, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    url = info.database_url
    engine = create_async_engine(url)
    try:
        log.info("filling an expired day with %d events", args.expired)
        day, fill_s = await fill_expired(url, engine, args.expired)
        values = make_values(args.events)
        servers = info.kafka_bootstrap_servers
        await create_topic({"bootstrap_servers": servers}, TOPIC, PARTITIONS)
        await topics.load(servers, TOPIC, PARTITIONS, values)
        off = {"PERSISTER_SERVICES__RETENTION_TRIMMER__ENABLED": "false"}
        worker = Replicas(info, [TOPIC], f"bench-ret-{uuid.uuid4().hex[:8]}", log_dir, off)
        # As in production, the partitions ahead exist long before a day
        # expires, so the measured trim only drops and deletes.
        await table_partitions.ensure_for(engine, Settings(retention=RETENTION), datetime.now(UTC))
        async with db.connect(url) as conn, db.connect(url) as sampler:
            size_before = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
            progress = Progress(worker)
            worker.start(1)
            sampling = asyncio.create_task(progress.run(sampler, TOPIC))
            try:
                trim = await _trim_during_ingest(
                    engine, conn, worker, progress, args.events, args.pause_factor
                )
            finally:
                sampling.cancel()
                codes = await asyncio.to_thread(worker.stop)
            # Statistics reach the views within a second of the transaction.
            await asyncio.sleep(1.0)
            dead, deleted, tables = await conn.fetchrow(STATS_SQL)
            size_after = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
            left = await conn.fetchval(
                "SELECT count(*) FROM pg_class WHERE relname = ANY($1::text[])",
                [partition_name(t, Range(day, day + DAY)) for t in PARTITIONED],
            )
            stored = await db.counts(conn)
    finally:
        await engine.dispose()
    return {
        "expired_events": args.expired,
        "expired_day": day.isoformat(),
        "fill_seconds": round(fill_s, 1),
        **trim,
        "worker_exit_codes": codes,
        "dropped_tables_left": int(left),
        "dead_tuples_after": int(dead),
        "rows_deleted_one_by_one": int(deleted),
        "tables_counted": int(tables),
        "database_bytes_before": size_before,
        "database_bytes_after": size_after,
        "events_left": stored.events,
        "resource_rows_left": stored.resources,
    }


async def _trim_during_ingest(
    engine: AsyncEngine,
    conn: db.Connection,
    worker: Replicas,
    progress: Progress,
    backlog: int,
    pause_factor: float,
) -> dict[str, Any]:
    """Wait for full speed, trim, and take the rates around it."""
    await _first_rows(worker, progress)
    await asyncio.sleep(WARM_UP_S + WINDOW_S)
    lease = await leader.acquire(engine, "retention", "bench", timedelta(minutes=5))
    settings = Settings(retention=RETENTION)
    server = await ServerCpu.of(conn)
    cpu_before = server.seconds()
    started = time.monotonic()
    cutoff = datetime.now(UTC) - RETENTION
    dropped = await table_partitions.drop_expired(engine, cutoff, lease, pause_factor)
    drop_s = time.monotonic() - started
    # The rest of the trim as the leader runs it: partitions ahead, and the
    # rows left older than the cutoff (none were written here).
    trimmed = await retention.trim(engine, settings, lease)
    trim_s = time.monotonic() - started
    trim_cpu = server.seconds() - cpu_before
    # The ingest rate over the whole drop, pauses included, and at least
    # WINDOW_S; then over WINDOW_S after it.
    span_s = max(drop_s, WINDOW_S)
    end = started + span_s + WINDOW_S
    await asyncio.sleep(max(0.0, end - time.monotonic()) + SAMPLE_S * 2)
    rates = _rates(progress, started, span_s, end, backlog)
    steps = [s for d in dropped for s in (d.detach_s, *d.steps_s)]
    log.info(
        "drop %.3f s (%d steps, %.3f s of them), whole trim %.3f s, %s; ingest %s",
        drop_s,
        len(steps),
        sum(steps),
        trim_s,
        trimmed,
        rates,
    )
    return {
        "pause_factor": pause_factor,
        "drop_seconds": round(drop_s, 4),
        "detach_seconds": round(sum(d.detach_s for d in dropped), 4),
        "drop_steps": len(steps),
        "drop_steps_seconds": round(sum(steps), 4),
        "longest_step_seconds": round(max(steps, default=0.0), 4),
        "trim_seconds": round(trim_s, 4),
        "trim_server_cpu_seconds": round(trim_cpu, 3),
        "partitions_dropped": len(dropped) + trimmed.partitions,
        "rows_deleted_by_trim": trimmed.events + trimmed.resources,
        **rates,
    }


async def _first_rows(worker: Replicas, progress: Progress) -> None:
    deadline = time.monotonic() + 120
    while progress.at(time.monotonic()) == 0:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker stored nothing in 120 s:\n{worker.log_tail(0)}")
        await asyncio.sleep(SAMPLE_S)


def _rates(
    progress: Progress, started: float, span_s: float, end: float, backlog: int
) -> dict[str, Any]:
    """Ingest in the WINDOW_S before `started`, over the `span_s` from it, and
    from then until `end`."""
    before = progress.rate(started - WINDOW_S, started)
    during = progress.rate(started, started + span_s)
    after = progress.rate(started + span_s, end)
    return {
        "ingest_before_per_s": round(before, 1),
        "ingest_during_per_s": round(during, 1),
        "ingest_ratio": round(during / before, 3) if before else None,
        "ingest_after_per_s": round(after, 1),
        "ingest_after_ratio": round(after / before, 3) if before else None,
        "window_seconds": round(span_s, 3),
        # Otherwise the worker ran out of backlog and the rates mean nothing.
        "backlog_left_after_window": progress.at(end) < backlog,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="persister-bench-retention-") as tmp:
        stack = LocalStack(Path(tmp), database_url=None)
        try:
            info = stack.start()
            upgrade(info.database_url)
            result = asyncio.run(measure(info, args, Path(tmp)))
        finally:
            stack.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "retention.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
