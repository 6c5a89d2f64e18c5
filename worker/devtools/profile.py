"""Where the write path's CPU goes, step by step, in µs per event.

    python -m worker.devtools.profile [--events FILE] [--count N] [--database-url URL]

Runs the worker's own functions on the benchmark's events (or on FILE, one
message per line, as a producer would send it), a batch at a time, and prints
one row per step: the best of `--repeat` passes, in this process's CPU time
(so another process's load barely moves it). With `--database-url` (a
database `persister migrate` has prepared) it also measures the client side of
the COPY, in a transaction that is rolled back. Fetching, batching and the
event loop are not in it: `make bench` measures the worker whole.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from schemas.events import Envelope, read_envelope
from worker.core.database_url import normalize as normalize_database_url
from worker.core.settings import Limits
from worker.core.startup import tune_collector
from worker.devtools.bench.dataset import make_values
from worker.pipeline.batching import Record
from worker.pipeline.connections import create_engine
from worker.pipeline.decoding import Rows, event_values, resource_values, to_rows
from worker.pipeline.inserts import EVENT_COLUMNS, RESOURCE_COLUMNS, stamped

MAX_MESSAGE_BYTES = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True)
class Message:
    """A record as the worker reads it from Kafka."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None
    timestamp: int


def best_us(step: Callable[[], object], events: int, repeat: int) -> float:
    """The fastest of `repeat` runs of `step`, in µs of CPU per event."""
    times = []
    for _ in range(repeat):
        started = time.process_time()
        step()
        times.append(time.process_time() - started)
    return min(times) / events * 1e6


def batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def copy_records(rows: Rows) -> tuple[list[Any], list[Any]]:
    """What the write hands to COPY (see `worker.pipeline.inserts.insert_rows`)."""
    return list(stamped(rows.events)), rows.resources_of(rows.events)


def per_batch(step: Callable[[Any], object], inputs: list[Any]) -> Callable[[], None]:
    """`step` over each batch of `inputs`, each batch's results dropped before
    the next, as the worker drops a batch's rows once written."""

    def run() -> None:
        for part in inputs:
            step(part)

    return run


def steps(values: list[bytes], batch: int, repeat: int) -> list[tuple[str, float]]:
    limits, n = Limits(), len(values)
    now_ms = int(time.time() * 1000)
    records = [Message("events", 0, i, v, None, now_ms) for i, v in enumerate(values)]
    envelopes = [read_envelope(v, limits) for v in values]
    stamped_envelopes = batches([(e, e.received or e.occurred) for e in envelopes], batch)
    parts = batches(records, batch)
    rows = [to_rows(part, limits, MAX_MESSAGE_BYTES) for part in parts]

    def envelopes_of(part: Sequence[bytes]) -> object:
        return [read_envelope(v, limits) for v in part]

    def events_of(part: Sequence[tuple[Envelope, datetime]]) -> object:
        return [event_values(e, received) for e, received in part]

    def resources_of(part: Sequence[tuple[Envelope, datetime]]) -> object:
        return [resource_values(e) for e, _ in part]

    def rows_of(part: Sequence[Record]) -> object:
        return to_rows(part, limits, MAX_MESSAGE_BYTES)

    measured = [
        ("`read_envelope`, with the rules", per_batch(envelopes_of, batches(values, batch))),
        ("`event_values`, with JSON text", per_batch(events_of, stamped_envelopes)),
        ("`resource_values`", per_batch(resources_of, stamped_envelopes)),
        ("whole `to_rows`", per_batch(rows_of, parts)),
        ("the COPY records (stamped, resources in order)", per_batch(copy_records, rows)),
    ]
    return [(name, best_us(step, n, repeat)) for name, step in measured]


async def copy_client_us(url: str, values: list[bytes], batch: int, repeat: int) -> float:
    """asyncpg's COPY of the rows on a connection of the worker's own engine
    (its codecs), client CPU only, rolled back."""
    limits = Limits()
    now_ms = int(time.time() * 1000)
    records = [Message("events", 0, i, v, None, now_ms) for i, v in enumerate(values)]
    prepared = [
        copy_records(to_rows(p, limits, MAX_MESSAGE_BYTES)) for p in batches(records, batch)
    ]
    engine = create_engine(normalize_database_url(url), pool_size=1)
    try:
        async with engine.connect() as conn:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            times = []
            for _ in range(repeat):
                took = 0.0
                for event_rows, resource_rows in prepared:
                    transaction = driver.transaction()
                    await transaction.start()
                    started = time.process_time()
                    await driver.copy_records_to_table(
                        "events", records=event_rows, columns=EVENT_COLUMNS
                    )
                    await driver.copy_records_to_table(
                        "event_resources", records=resource_rows, columns=RESOURCE_COLUMNS
                    )
                    took += time.process_time() - started
                    await transaction.rollback()  # the tables stay as they were
                times.append(took)
    finally:
        await engine.dispose()
    return min(times) / len(values) * 1e6


def read_values(path: Path | None, count: int) -> list[bytes]:
    if path is None:
        return make_values(count)
    return [line for line in path.read_bytes().splitlines() if line.strip()][:count]


def table(rows: list[tuple[str, float]]) -> str:
    lines = ["| step | µs/event |", "|---|---:|"]
    return "\n".join(lines + [f"| {name} | {us:.1f} |" for name, us in rows])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=Path, help="one message per line (default: the bench's)")
    parser.add_argument("--count", type=int, default=50_000, help="events to use (50000)")
    parser.add_argument("--batch", type=int, default=5_000, help="events per batch (5000)")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best counts (5)")
    parser.add_argument("--database-url", help="a migrated database: adds the COPY's client side")
    args = parser.parse_args(argv)
    values = read_values(args.events, args.count)
    # The collector as `persister run` sets it: its passes are part of the cost.
    thresholds = gc.get_threshold()
    tune_collector()
    try:
        rows = steps(values, args.batch, args.repeat)
        if args.database_url:
            url = args.database_url
            copy_us = asyncio.run(copy_client_us(url, values, args.batch, args.repeat))
            rows.append(("asyncpg `copy_records_to_table`, client side", copy_us))
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    print(f"{len(values)} events, {args.batch} per batch, best of {args.repeat} (CPU time)")
    print(table(rows))


if __name__ == "__main__":
    main()
