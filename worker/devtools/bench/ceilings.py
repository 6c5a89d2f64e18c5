"""The two ceilings the worker sits under, and what each index costs.

- consume: read the whole topic and validate every value, no database;
- write: COPY the same rows straight into the tables, no Kafka, no validation;
- index costs: that COPY with each secondary index dropped in turn, and with
  primary keys only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.events import read_envelope
from worker.core.settings import Limits, Settings
from worker.devtools.bench import db, reference
from worker.devtools.bench.dataset import CopyChunk
from worker.devtools.bench.results import CONSUME_CEILING, WRITE_CEILING, IndexCost, Phase
from worker.devtools.bench.server import ServerCpu
from worker.pipeline.inserts import EVENT_COLUMNS, RESOURCE_COLUMNS

log = logging.getLogger(__name__)

SECONDARY_INDEXES_SQL = """
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = current_schema() AND tablename IN ('events', 'event_resources')
  AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE contype = 'p')
ORDER BY tablename DESC, indexname
"""


async def consume(bootstrap_servers: str, topic: str, ends: dict[int, int]) -> Phase:
    """Read every partition from the beginning to `ends`, validating as the worker does."""
    # The worker's fetch size, so this ceiling reads the way the worker does.
    fetch_bytes = max(1_048_576, Settings.model_fields["max_message_bytes"].default + 1024)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        max_partition_fetch_bytes=fetch_bytes,
    )
    limits = Limits()
    started = time.monotonic()
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        left = {tp: ends[tp.partition] for tp in tps if ends[tp.partition] > 0}
        read = 0
        while left:
            fetched = await consumer.getmany(*left, timeout_ms=1000)
            for tp, records in fetched.items():
                for record in records:
                    read_envelope(record.value, limits)
                read += len(records)
                if records and records[-1].offset + 1 >= left[tp]:
                    del left[tp]
        seconds = time.monotonic() - started
    finally:
        await consumer.stop()
    return Phase(CONSUME_CEILING, read, seconds, "aiokafka, no group; validated as the worker does")


async def copy(conn: db.Connection, chunks: Sequence[CopyChunk], schema: str = "public") -> float:
    """COPY `chunks` into events and event_resources, one transaction each; the seconds taken."""
    started = time.monotonic()
    for chunk in chunks:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "events", records=chunk.events, columns=EVENT_COLUMNS, schema_name=schema
            )
            await conn.copy_records_to_table(
                "event_resources",
                records=chunk.resources,
                columns=RESOURCE_COLUMNS,
                schema_name=schema,
            )
    return time.monotonic() - started


async def write(
    database_url: str,
    chunks: Sequence[CopyChunk],
    *,
    name: str = WRITE_CEILING,
    schema: str = "public",
    on_empty: bool = True,
) -> Phase:
    """COPY `chunks` into `schema`'s tables, emptied before and after unless
    `on_empty` is False (then the rows stay, on top of those already there)."""
    empty = db.truncate if schema == "public" else reference.truncate
    async with db.connect(database_url) as conn:
        if on_empty:
            await empty(conn)
        else:
            await conn.execute("CHECKPOINT")
        cpu = await ServerCpu.of(conn)
        before = cpu.seconds()
        seconds = await copy(conn, chunks, schema)
        server_cpu = cpu.seconds() - before
        if on_empty:
            await empty(conn)
    events = sum(map(len, chunks))
    note = f"asyncpg COPY, {len(chunks[0]) if chunks else 0:,} events per transaction"
    if schema != "public":
        note += f"; schema {schema}"
    return Phase(name, events, seconds, note, server_cpu_seconds=server_cpu)


async def index_costs(database_url: str, chunks: Sequence[CopyChunk]) -> list[IndexCost]:
    """COPY `chunks` into empty tables once per index configuration, in two
    passes (the second in reverse order), keeping each configuration's faster
    run: a drift over the phase, or another process's burst, then does not
    show up as an index cost."""
    events = sum(map(len, chunks))
    async with db.connect(database_url) as conn:
        definitions = dict(await conn.fetch(SECONDARY_INDEXES_SQL))
        configs: list[tuple[str, tuple[str, ...]]] = [("all indexes", ())]
        configs += [(f"without {name}", (name,)) for name in definitions]
        configs.append(("primary keys only", tuple(definitions)))
        best: dict[str, IndexCost] = {}
        for config, dropped in [*configs, *reversed(configs)]:
            seconds = await _copy_without(conn, chunks, {n: definitions[n] for n in dropped})
            log.info("index costs: %s: %.0f events/s", config, events / seconds)
            if config not in best or seconds < best[config].seconds:
                best[config] = IndexCost(config, dropped, events, seconds)
        return [best[config] for config, _ in configs]


async def _copy_without(
    conn: db.Connection, chunks: Sequence[CopyChunk], dropped: dict[str, str]
) -> float:
    """COPY into emptied tables without the `dropped` indexes (name: definition);
    they are recreated from their definitions afterwards, also when COPY fails."""
    await db.truncate(conn)
    for name in dropped:
        await conn.execute(f'DROP INDEX "{name}"')
    try:
        return await copy(conn, chunks)
    finally:
        await db.truncate(conn)
        for definition in dropped.values():
            await conn.execute(definition)
