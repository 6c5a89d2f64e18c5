"""The baseline: a persister written the obvious way, as Prefect's event persister is.

Small batches (20 events, Prefect's default), each written with SQLAlchemy
`insert(...).values([...]).on_conflict_do_nothing()` statements built from
dict rows (SQLAlchemy serialises the JSON columns), one transaction per batch,
and the Kafka offsets committed after each.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import create_async_engine

from schemas.events import Event
from schemas.tables import event_resources, events
from worker.devtools.bench import db
from worker.devtools.bench.results import NAIVE, Check, Phase
from worker.devtools.bench.server import ServerCpu
from worker.pipeline.decoding import JSON_COLUMNS, event_row, resource_rows

log = logging.getLogger(__name__)

BATCH_EVENTS = 20


@dataclass(frozen=True)
class NaiveRun:
    phase: Phase
    resource_rows: int


def _objects(row: dict[str, Any]) -> dict[str, Any]:
    return {k: orjson.loads(v) if k in JSON_COLUMNS else v for k, v in row.items()}


def _rows(event: Event, timestamp_ms: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The worker's rows, but with the JSON columns as objects: SQLAlchemy
    serialises them, as in Prefect's persister."""
    received = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return _objects(event_row(event, received)), [_objects(r) for r in resource_rows(event)]


async def run(
    bootstrap_servers: str, database_url: str, topic: str, total: int, budget_s: float
) -> NaiveRun:
    """Persist the topic until all `total` events are written or `budget_s` has passed."""
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        group_id=f"bench-naive-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    started = time.monotonic()
    written = resources = 0
    await consumer.start()
    try:
        while written < total and time.monotonic() - started < budget_s:
            fetched = await consumer.getmany(timeout_ms=500, max_records=BATCH_EVENTS)
            records = [record for batch in fetched.values() for record in batch]
            if not records:
                continue
            event_rows, resource_rows = [], []
            for record in records:
                row, rows = _rows(Event.model_validate_json(record.value), record.timestamp)
                event_rows.append(row)
                resource_rows.extend(rows)
            async with engine.begin() as conn:
                await conn.execute(insert(events).values(event_rows).on_conflict_do_nothing())
                await conn.execute(
                    insert(event_resources).values(resource_rows).on_conflict_do_nothing()
                )
            await consumer.commit()
            written += len(event_rows)
            resources += len(resource_rows)
        seconds = time.monotonic() - started
    finally:
        await consumer.stop()
        await engine.dispose()
    done = "all events" if written >= total else f"a {budget_s:.0f} s budget"
    note = f"batches of {BATCH_EVENTS}, insert().values(); ran for {done}"
    log.info("naive baseline: %d events in %.1f s", written, seconds)
    return NaiveRun(Phase(NAIVE, written, seconds, note), resources)


async def measure(
    bootstrap_servers: str, database_url: str, topic: str, total: int, budget_s: float
) -> tuple[Phase, list[Check]]:
    """The baseline on emptied tables, and whether it wrote what it says it did."""
    async with db.connect(database_url) as conn:
        await db.truncate(conn)
        server = await ServerCpu.of(conn)
        before = server.seconds()
    done = await run(bootstrap_servers, database_url, topic, total, budget_s)
    done.phase.server_cpu_seconds = server.seconds() - before
    async with db.connect(database_url) as conn:
        counts = await db.counts(conn)
    return done.phase, [
        Check("naive baseline: events rows", done.phase.events, counts.events),
        Check("naive baseline: event_resources rows", done.resource_rows, counts.resources),
    ]
