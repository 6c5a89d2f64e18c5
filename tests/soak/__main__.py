"""`make soak`: a long steady load on a local stack with faults on a schedule.

Three workers store a steady load at half the rate one worker stores alone
(measured first, or `--rate`), the trimmer deletes the half of the events
that is past the retention every few minutes, one worker is restarted every
`--restart-every` seconds, PostgreSQL is restarted at half time and one
broker two minutes later. Every 10 s it samples each worker's RSS, open file
descriptors and asyncio tasks, the database connections, the lag and the
end-to-end latency; it writes soak.json and soak.png to `--out` and exits 1
if a check fails (see `tests.soak.verdict`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from schemas.migrate import upgrade
from tests.integration.workers import WorkerPool, worker_env
from tests.soak import verdict
from tests.soak.calibrate import single_replica_rate
from tests.soak.latency import measure as measure_latency
from tests.soak.load import Load
from tests.soak.watch import Watch
from worker.core.kafka_admin import create_topic
from worker.devtools.stack import SERVER_SETTINGS, LocalStack

log = logging.getLogger("soak")

PARTITIONS = 6
WORKERS = 3
SAMPLE_EVERY_S = 10.0
DB_OUTAGE_S = 10.0


@dataclass
class Run:
    stack: LocalStack
    pool: WorkerPool
    load: Load
    watch: Watch
    duration_s: float
    restart_every_s: float
    faults: list[tuple[float, float, str]] = field(default_factory=list)

    def now(self) -> float:
        return self.watch.elapsed()

    async def fault(self, label: str, action: Callable[[], object]) -> None:
        began = self.now()
        await asyncio.to_thread(action)
        self.faults.append((began, self.now(), label))
        log.info("%s done (%.1f s)", label, self.now() - began)

    async def schedule(self) -> None:
        """The faults, each at its time; returns at the end of the run."""
        plan: list[tuple[float, str]] = []
        t, k = self.restart_every_s, 0
        while t < self.duration_s - 60:
            plan.append((t, f"restart worker {k % WORKERS}"))
            t, k = t + self.restart_every_s, k + 1
        plan.append((self.duration_s / 2, "restart PostgreSQL"))
        plan.append((self.duration_s / 2 + 120, "restart Kafka node 1"))
        for at, label in sorted(plan):
            await asyncio.sleep(max(0.0, at - self.now()))  # the schedule of the run
            await self.fault(label, self._action(label))
        await asyncio.sleep(max(0.0, self.duration_s - self.now()))

    def _action(self, label: str) -> Callable[[], object]:
        if label.startswith("restart worker"):
            slot = int(label.rsplit(" ", 1)[1])
            return lambda: (self.pool.terminate(slot), self.pool.restart(slot))[-1]
        if label == "restart PostgreSQL":
            return self._restart_postgres
        return self._restart_broker

    def _restart_broker(self) -> None:
        self.stack.stop_kafka([1])
        self.stack.start_kafka([1])

    def _restart_postgres(self) -> None:
        self.stack.stop_postgres()
        time.sleep(DB_OUTAGE_S)  # the outage, in a worker thread
        self.stack.start_postgres()


async def soak(args: argparse.Namespace, stack: LocalStack, tmp: Path) -> bool:
    info = stack.info
    options = {"bootstrap_servers": info.kafka_bootstrap_servers}
    rate = args.rate or await single_replica_rate(info, tmp / "calibration") / 2
    log.info("steady load: %.0f events/s", rate)
    topic, group = "soak", "soak"
    # Kafka keeps 20 minutes: the disk stays bounded however long the run.
    await create_topic(options, topic, PARTITIONS, {"retention.ms": str(20 * 60_000)})
    duration_s = args.minutes * 60
    retention = timedelta(seconds=duration_s) + timedelta(hours=1)
    env = worker_env(
        info,
        topic,
        group,
        session_timeout_s=10.0,
        flush_every_s=0.5,
        retention=f"{int(retention.total_seconds())}s",
        trim_every=f"{args.trim_every}s",
    )
    load = Load(info.kafka_bootstrap_servers, topic, rate, old_by=retention + timedelta(hours=1))
    with WorkerPool(env, tmp / "workers") as pool:
        pool.start(WORKERS)
        watch = Watch(stack, pool, topic, group, PARTITIONS)
        run = Run(stack, pool, load, watch, duration_s, args.restart_every)
        await watch.open()
        tasks = [asyncio.create_task(load.run()), asyncio.create_task(watch.run(SAMPLE_EVERY_S))]
        try:
            await run.schedule()
        finally:
            load.stop()
            await tasks[0]
        final = await verdict.settle(watch, load, pool)
        watch.stop()
        await tasks[1]
        since = verdict.recent_since(load)
        latency = await measure_latency(watch.engine, since, watch.run_buckets)
        await watch.close()
        codes = await asyncio.to_thread(pool.stop_all)
    report = verdict.Report(args.minutes, rate, run.faults, watch.samples, final, codes, latency)
    return verdict.write(report, args.out, [f"{p}" for p in (tmp / "workers").glob("*.log")])


def main() -> None:
    parser = argparse.ArgumentParser(prog="make soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s (0: half of 1 worker)")
    parser.add_argument("--restart-every", type=float, default=600.0, help="seconds")
    parser.add_argument("--trim-every", type=int, default=180, help="seconds")
    parser.add_argument("--out", type=Path, default=Path("soak-results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="persister-soak-") as tmp:
        # Commit timestamps: each event's age at commit, for the latency report.
        settings = {**SERVER_SETTINGS, "track_commit_timestamp": "on"}
        stack = LocalStack(
            Path(tmp) / "stack", database_url=None, brokers=args.brokers, server_settings=settings
        )
        try:
            upgrade(stack.start().database_url)
            passed = asyncio.run(soak(args, stack, Path(tmp)))
        finally:
            stack.stop()
    raise SystemExit(0 if passed else 1)


if __name__ == "__main__":
    main()
