"""A steady load on a three-broker cluster: three workers store events sent
at 20% of what one worker stores alone, and each event's latency, from its
record timestamp to its row's `recorded`, is read from the database. The
soak's setup (`make soak`) without its faults, so the figure is what a
healthy cluster gives, replication included (acks=all, two in-sync
replicas)."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from pathlib import Path
from uuid import UUID

from worker.core.kafka_admin import create_topic
from worker.devtools.bench import db, topics
from worker.devtools.bench.context import PARTITIONS, Bench
from worker.devtools.bench.dataset import SEED, make_dataset
from worker.devtools.bench.latency import LIGHT_LOAD_SHARE, light_load_seconds
from worker.devtools.bench.results import STEADY_LOAD, Check, Latency
from worker.devtools.bench.workers import Replicas
from worker.devtools.stack import LocalStack

log = logging.getLogger(__name__)

BROKERS = 3
WORKERS = 3
TOPIC = "bench-steady"
# Events sent before the measured ones, so the group has settled (three
# members joining rebalance it more than once) and every partition is owned.
WARM_UP_SECONDS = 3.0
CAUGHT_UP_TIMEOUT_S = 120.0


async def measure(bench: Bench, full_rate: float) -> tuple[Latency, list[Check]]:
    """The steady run's latency, and a check that every event was stored."""
    with tempfile.TemporaryDirectory(prefix="persister-bench-cluster-") as tmp:
        cluster = LocalStack(Path(tmp), database_url=bench.info.database_url, brokers=BROKERS)
        try:
            info = await asyncio.to_thread(cluster.start)
            servers = info.kafka_bootstrap_servers
            await create_topic({"bootstrap_servers": servers}, TOPIC, PARTITIONS)
            group = f"bench-steady-{uuid.uuid4().hex[:8]}"
            workers = Replicas(info, [TOPIC], group, bench.log_dir)
            try:
                workers.start(WORKERS)
                return await _steady(bench, workers, servers, full_rate)
            finally:
                codes = await asyncio.to_thread(workers.stop)
                log.info("steady run: workers exited %s", codes)
        finally:
            await asyncio.to_thread(cluster.stop)


async def _steady(
    bench: Bench, workers: Replicas, servers: str, full_rate: float
) -> tuple[Latency, list[Check]]:
    rate = max(1.0, LIGHT_LOAD_SHARE * full_rate)
    seconds = light_load_seconds(bench.size)
    warm_up = make_dataset(max(PARTITIONS, int(rate * WARM_UP_SECONDS)), seed=SEED + 2)
    fresh = make_dataset(max(20, int(rate * seconds)), seed=SEED + 3)
    async with db.connect(bench.info.database_url) as conn:
        await topics.send_paced(servers, TOPIC, warm_up.values, rate, acks="all")
        await _caught_up(conn, workers, servers)
        log.info("steady run: %d events at %.0f/s on %d brokers", fresh.size, rate, BROKERS)
        took = await topics.send_paced(servers, TOPIC, fresh.values, rate, acks="all")
        await _caught_up(conn, workers, servers)
        ids = [UUID(event["id"]) for event in fresh.events]
        note = (
            f"{fresh.size} events at {rate:.0f}/s over {took:.1f} s, acks=all, "
            f"{WORKERS} workers, {PARTITIONS} partitions"
        )
        latency = await db.latency(conn, STEADY_LOAD, ids=ids, note=note)
        written = await db.count_events(conn, ids)
    return latency, [Check("steady run: fresh events rows", fresh.size, written)]


async def _caught_up(conn: db.Connection, workers: Replicas, servers: str) -> None:
    ends = await topics.end_offsets(servers, TOPIC, PARTITIONS)
    await workers.wait_caught_up(conn, TOPIC, ends, CAUGHT_UP_TIMEOUT_S)
