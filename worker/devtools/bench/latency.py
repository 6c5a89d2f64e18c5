"""End-to-end latency: record timestamp (`events.received`, which the worker takes
from the Kafka record when the envelope has none) to the row being written
(`events.recorded`, the insert transaction's now()).

now() is the transaction's start, so every figure is short by the time the
transaction takes to commit (a few ms)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from worker.devtools.bench import db, topics
from worker.devtools.bench.context import Bench
from worker.devtools.bench.dataset import SEED, make_dataset
from worker.devtools.bench.results import Check, Latency
from worker.devtools.bench.workers import Replicas

log = logging.getLogger(__name__)

LIGHT_LOAD_SHARE = 0.2
LIGHT_LOAD_SECONDS = 15.0
FULL_SIZE = 200_000
UNDER_COUNT = "recorded is now() at the transaction's start: short by the commit (a few ms)"


def light_load_seconds(size: int) -> float:
    """15 s at the full benchmark size, shorter for smaller runs (3 s at least)."""
    return min(LIGHT_LOAD_SECONDS, max(3.0, LIGHT_LOAD_SECONDS * size / FULL_SIZE))


@dataclass
class LatencyProbe:
    """Measures latency with the 1-replica worker once it caught up with the backlog."""

    bench: Bench
    # Added to each latency's name, to tell runs apart.
    label: str = ""
    # Events per second the worker managed on the backlog.
    full_rate: float = 0.0
    latencies: list[Latency] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    async def __call__(
        self, conn: db.Connection, workers: Replicas, started: datetime, seconds: float
    ) -> None:
        self.full_rate = self.bench.size / seconds
        await self.full_load(conn, started)
        await self.light_load(conn, workers)

    async def full_load(self, conn: db.Connection, started: datetime) -> None:
        # The whole backlog was produced before the worker started, so the raw
        # figure is mostly how long records sat in the topic; counting from
        # the worker's start shows how far into the run each row was written.
        self.latencies.append(
            await db.latency(
                conn,
                "full load (backlog), from record timestamp" + self.label,
                note="includes the time the backlog waited before the worker started",
            )
        )
        self.latencies.append(
            await db.latency(
                conn,
                "full load (backlog), from worker start" + self.label,
                not_before=started,
                note="recorded - max(received, worker start)",
            )
        )

    async def light_load(self, conn: db.Connection, workers: Replicas) -> None:
        bench = self.bench
        seconds = light_load_seconds(bench.size)
        rate = max(1.0, LIGHT_LOAD_SHARE * self.full_rate)
        fresh = make_dataset(max(20, int(rate * seconds)), seed=SEED + 1)
        ids = [UUID(event["id"]) for event in fresh.events]
        log.info("latency: %d fresh events at %.0f/s", fresh.size, rate)
        took = await topics.send_paced(
            bench.info.kafka_bootstrap_servers, bench.latency_topic, fresh.values, rate
        )
        ends = await topics.end_offsets(
            bench.info.kafka_bootstrap_servers, bench.latency_topic, len(bench.ends)
        )
        await workers.wait_caught_up(conn, bench.latency_topic, ends, 60.0)
        note = (
            f"{fresh.size} events at {rate:.0f}/s ({LIGHT_LOAD_SHARE:.0%} of the 1-replica "
            f"rate) over {took:.1f} s, to a caught-up worker"
        )
        name = f"{LIGHT_LOAD_SHARE:.0%} load, from record timestamp{self.label}"
        self.latencies.append(await db.latency(conn, name, ids=ids, note=note))
        written = await db.count_events(conn, ids)
        what = f"latency phase{self.label}: fresh events rows"
        self.checks.append(Check(what, fresh.size, written))
