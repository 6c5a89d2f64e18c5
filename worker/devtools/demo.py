"""`make demo`: the whole pipeline on a throwaway local stack.

Starts Kafka and PostgreSQL, migrates, runs two worker processes, produces
100,000 events (a few of them bad), waits until every offset is stored,
prints the per-partition positions and the row counts, and stops everything.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.migrate import upgrade
from schemas.tables import consumer_offsets, dead_letters, event_resources, events
from worker.core.kafka_admin import create_topic
from worker.devtools import loadgen
from worker.devtools.stack import LocalStack, StackInfo
from worker.pipeline.connections import create_engine

TOPIC = "events"
PARTITIONS = 4
EVENTS = 100_000
INVALID_EVERY = 10_000
WORKERS = 2
GROUP = "event-persister"

# Lines are not cut to a width: a terminal wraps them itself, and a file or
# a pipe has none (rich would assume 80 columns).
console = Console(soft_wrap=True)


def start_workers(info: StackInfo, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": info.kafka_bootstrap_servers,
        "DATABASE_URL": info.database_url,
        "PERSISTER_TOPICS": TOPIC,
        "PERSISTER_GROUP_ID": GROUP,
        # Both replicas run on this host: each takes a free metrics port.
        "PERSISTER_METRICS_HOST": "127.0.0.1",
        "PERSISTER_METRICS_PORT": "0",
    }
    workers = []
    for i in range(WORKERS):
        log = (log_dir / f"worker-{i}.log").open("wb")
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "worker", "run"], env=env, stdout=log, stderr=log
            )
        )
    return workers


async def stored_vs_end(engine: AsyncEngine, info: StackInfo) -> list[tuple[int, int, int]]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=info.kafka_bootstrap_servers)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
    finally:
        await consumer.stop()
    c = consumer_offsets.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(c.partition, c.next_offset).where(c.group_id == GROUP, c.topic == TOPIC)
        )
        stored = {partition: offset for partition, offset in rows}
    return [(tp.partition, stored.get(tp.partition, 0), end) for tp, end in ends.items()]


async def table_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        tables = {
            "events": events,
            "event_resources": event_resources,
            "dead_letters": dead_letters,
        }
        return {
            name: int((await conn.execute(select(func.count()).select_from(t))).scalar_one())
            for name, t in tables.items()
        }


async def produce_and_wait(info: StackInfo) -> None:
    kafka = {"bootstrap_servers": info.kafka_bootstrap_servers}
    await create_topic(kafka, TOPIC, PARTITIONS)
    started = time.monotonic()
    with Progress(console=console) as progress:
        bar = progress.add_task("producing", total=EVENTS)
        await loadgen.produce(
            kafka,
            TOPIC,
            loadgen.messages(EVENTS, seed=42, invalid_every=INVALID_EVERY),
            on_sent=lambda n: progress.advance(bar, n),
        )
    engine = create_engine(info.database_url, pool_size=1)
    try:
        with Progress(console=console) as progress:
            bar = progress.add_task("persisting", total=EVENTS)
            while True:
                positions = await stored_vs_end(engine, info)
                progress.update(bar, completed=sum(stored for _, stored, _ in positions))
                if all(stored == end for _, stored, end in positions):
                    break
                if time.monotonic() - started > 300:
                    raise SystemExit("demo: workers did not catch up within 300 s")
                await asyncio.sleep(0.5)
        report(positions, await table_counts(engine), time.monotonic() - started)
    finally:
        await engine.dispose()


def report(positions: list[tuple[int, int, int]], counts: dict[str, int], took_s: float) -> None:
    table = Table(title=f"group {GROUP!r} on topic {TOPIC!r}")
    for column in ("partition", "stored offset", "end offset", "lag"):
        table.add_column(column, justify="right")
    for partition, stored, end in sorted(positions):
        table.add_row(str(partition), str(stored), str(end), str(end - stored))
    console.print(table, soft_wrap=False)  # its title centred over it
    console.print(
        f"{counts['events']} events, {counts['event_resources']} resource rows, "
        f"{counts['dead_letters']} dead letters; produced and persisted in {took_s:.1f} s"
    )


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    codes = [worker.wait(timeout=60) for worker in workers]
    console.print(f"workers stopped with exit codes {codes}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="persister-demo-") as tmp:
        stack = LocalStack(Path(tmp), database_url=None)
        console.print("starting Kafka and PostgreSQL ...")
        info = stack.start()
        workers: list[subprocess.Popen[bytes]] = []
        try:
            upgrade(info.database_url)
            workers = start_workers(info, Path(tmp))
            asyncio.run(produce_and_wait(info))
        finally:
            stop_workers(workers)
            stack.stop()


if __name__ == "__main__":
    main()
