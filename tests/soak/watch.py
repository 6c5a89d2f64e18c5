"""Sampling a running soak every few seconds (see `tests.soak.probes`)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import stored_offsets
from tests.integration.workers import WorkerPool
from tests.soak import probes
from worker.devtools.stack import LocalStack
from worker.pipeline.connections import create_engine

CONNECTIONS = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


class Watch:
    def __init__(
        self, stack: LocalStack, pool: WorkerPool, topic: str, group: str, partitions: int
    ) -> None:
        self.stack, self.pool, self.group, self.topic = stack, pool, group, topic
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.samples: list[probes.Sample] = []
        self.began = time.monotonic()
        self._stop = asyncio.Event()
        self._buckets: dict[int, dict[float, float]] = {}
        # Every window added up: the end-to-end latency histogram of the run.
        self.run_buckets: dict[float, float] = {}
        self._engine: AsyncEngine | None = None
        self._reader: AIOKafkaConsumer | None = None

    @property
    def engine(self) -> AsyncEngine:
        assert self._engine is not None, "open() first"
        return self._engine

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    async def open(self) -> None:
        self._engine = create_engine(self.stack.info.database_url, pool_size=1)
        self._reader = AIOKafkaConsumer(
            bootstrap_servers=self.stack.info.kafka_bootstrap_servers,
            isolation_level="read_committed",
        )
        await self._reader.start()

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.stop()
        if self._engine is not None:
            await self._engine.dispose()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.samples.append(await self.sample())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), every_s)

    async def lag(self) -> int | None:
        assert self._engine is not None and self._reader is not None
        try:
            ends = await self._reader.end_offsets(self.tps)
            stored = await stored_offsets(self._engine, self.group, self.topic)
        except (KafkaError, SQLAlchemyError, OSError):
            return None
        end = sum(int(offset) for offset in ends.values())
        return end - sum(stored.get(tp.partition, 0) for tp in self.tps)

    async def connections(self) -> int | None:
        assert self._engine is not None
        try:
            async with self._engine.connect() as conn:
                return int((await conn.execute(CONNECTIONS)).scalar_one())
        except (SQLAlchemyError, OSError):
            return None

    async def sample(self) -> probes.Sample:
        workers: dict[int, probes.WorkerSample] = {}
        window: dict[float, float] = {}
        for slot in self.pool.alive():
            pid = self.pool.pid(slot)
            found = probes.process(pid) if pid is not None else None
            if pid is None or found is None:
                continue
            url = probes.metrics_url(self.pool.current_log(slot))
            tasks, buckets = await asyncio.to_thread(probes.scrape, url) if url else (None, {})
            workers[slot] = probes.WorkerSample(pid, found[0], found[1], tasks, buckets)
            if buckets:
                previous = self._buckets.get(pid, {})
                probes.accumulate(window, probes.window(previous, buckets))
                self._buckets[pid] = buckets
        probes.accumulate(self.run_buckets, window)
        return probes.Sample(
            self.elapsed(),
            workers,
            await self.connections(),
            await self.lag(),
            probes.quantile(0.5, window),
            probes.quantile(0.99, window),
        )
