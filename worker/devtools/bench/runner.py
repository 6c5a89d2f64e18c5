"""One benchmark run: start a throwaway stack, load the topic, measure every
phase on the same events, report, and stop everything."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from schemas.migrate import upgrade
from worker.core.kafka_admin import create_topic
from worker.devtools.bench import (
    ceilings,
    db,
    naive,
    reference,
    server,
    steady,
    storage,
    topics,
)
from worker.devtools.bench.context import PARTITIONS, Bench
from worker.devtools.bench.dataset import copy_chunks, make_dataset
from worker.devtools.bench.latency import LatencyProbe
from worker.devtools.bench.report import print_report, write_chart, write_json
from worker.devtools.bench.results import (
    FIXED_BATCHES,
    WORKER_1,
    WORKER_1_FIXED,
    WORKER_2,
    Check,
    Results,
    run_name,
)
from worker.devtools.bench.workers import run_backlog
from worker.devtools.stack import LocalStack, StackInfo, kafka_version

log = logging.getLogger(__name__)

TOPIC = "bench-events"
LATENCY_TOPIC = "bench-latency"
LATENCY_TOPIC_FIXED = "bench-latency-fixed"
FIXED_BATCH_SETTINGS = {"PERSISTER_FLUSH_WHEN_CAUGHT_UP": "false"}
COPY_CHUNK_EVENTS = 10_000
INDEX_SAMPLE_EVENTS = 50_000
NAIVE_BUDGET_S = 30.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.devtools.bench", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="events in the topic")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output dir")
    parser.add_argument(
        "--naive-seconds",
        type=float,
        default=NAIVE_BUDGET_S,
        help="time budget of the naive baseline (it stops earlier when done)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="runs of the one-replica worker, default and fixed batches (ratios take the median)",
    )
    parser.add_argument(
        "--preload",
        type=int,
        default=0,
        help="also run COPY and the worker on tables already holding this many events",
    )
    args = parser.parse_args(argv)
    if args.preload < 0:
        parser.error("--preload must not be negative")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.events < 100:
        parser.error("--events must be at least 100")
    return args


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "kafka_version": kafka_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def prepare(info: StackInfo, size: int, log_dir: Path, results: Results) -> Bench:
    """Generate the events once, create the topics and load the main one."""
    dataset = make_dataset(size)
    servers = info.kafka_bootstrap_servers
    for topic in (TOPIC, LATENCY_TOPIC, LATENCY_TOPIC_FIXED):
        await create_topic({"bootstrap_servers": servers}, topic, PARTITIONS)
    log.info("loading %d events (%d bytes) into %s", size, dataset.nbytes, TOPIC)
    started = time.monotonic()
    await topics.load(servers, TOPIC, PARTITIONS, dataset.values)
    results.load_seconds = time.monotonic() - started
    results.load_bytes = dataset.nbytes
    ends = await topics.end_offsets(servers, TOPIC, PARTITIONS)
    results.checks.append(Check("topic loaded: end offsets", size, sum(ends.values())))
    async with db.connect(info.database_url) as conn:
        results.machine["postgres_version"] = await conn.fetchval("SHOW server_version")
    return Bench(info, dataset, TOPIC, ends, LATENCY_TOPIC, log_dir)


async def measure(
    bench: Bench, naive_budget_s: float, preload: int, runs: int, results: Results
) -> None:
    info = bench.info
    servers, url = info.kafka_bootstrap_servers, info.database_url
    log.info("consume ceiling")
    results.phases.append(await ceilings.consume(servers, bench.topic, bench.ends))
    # Prepared before any clock starts; `received` is irrelevant to COPY's speed.
    chunks = copy_chunks(bench.dataset.events, datetime.now(UTC), COPY_CHUNK_EVENTS)
    async with db.connect(url) as conn:
        await reference.create(conn)
    log.info("COPY into the previous schema, default server settings")
    results.phases.append(await storage.previous_copy(url, chunks))
    log.info("write ceiling")
    results.phases.append(await ceilings.write(url, chunks))
    log.info("index costs")
    results.index_costs = await ceilings.index_costs(
        url, chunks[: max(1, INDEX_SAMPLE_EVENTS // COPY_CHUNK_EVENTS)]
    )
    log.info("naive baseline (at most %.0f s)", naive_budget_s)
    phase, checks = await naive.measure(servers, url, bench.topic, bench.size, naive_budget_s)
    results.phases.append(phase)
    results.checks.extend(checks)
    log.info("worker, 1 replica, then latency")
    probe = LatencyProbe(bench)
    one = await run_backlog(bench, WORKER_1, 1, probe)
    results.phases.append(one.phase)
    results.checks.extend([*one.checks, *probe.checks])
    results.latencies = probe.latencies
    log.info("worker, 1 replica, fixed batches, then latency")
    fixed_bench = replace(bench, latency_topic=LATENCY_TOPIC_FIXED)
    fixed_probe = LatencyProbe(fixed_bench, label=FIXED_BATCHES)
    fixed = await run_backlog(
        fixed_bench, WORKER_1_FIXED, 1, fixed_probe, settings=FIXED_BATCH_SETTINGS
    )
    results.phases.append(fixed.phase)
    results.checks.extend([*fixed.checks, *fixed_probe.checks])
    results.latencies += fixed_probe.latencies
    log.info("steady load, %d workers on %d brokers", steady.WORKERS, steady.BROKERS)
    latency, checks = await steady.measure(bench, probe.full_rate)
    results.latencies.append(latency)
    results.checks.extend(checks)
    log.info("worker, 2 replicas")
    two = await run_backlog(bench, WORKER_2, 2)
    results.phases.append(two.phase)
    results.checks.extend(two.checks)
    await repeat_one_replica(bench, runs, results)
    if preload:
        await storage.measure(bench, chunks, preload, results)


async def repeat_one_replica(bench: Bench, runs: int, results: Results) -> None:
    """Runs 2 to `runs` of one replica, default and fixed batches in
    alternation: one run of each is within the other's noise (a few %), so
    the throughput ratios take the median of the runs."""
    for run in range(2, runs + 1):
        for name, settings in ((WORKER_1, None), (WORKER_1_FIXED, FIXED_BATCH_SETTINGS)):
            log.info("%s", run_name(name, run))
            again = await run_backlog(bench, run_name(name, run), 1, settings=settings)
            results.phases.append(again.phase)
            results.checks.extend(again.checks)


async def run(info: StackInfo, args: argparse.Namespace, log_dir: Path, results: Results) -> None:
    bench = await prepare(info, args.events, log_dir, results)
    await measure(bench, args.naive_seconds, args.preload, args.runs, results)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every correctness check passed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # aiokafka warns about every coordinator lookup of a brand-new group.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    results = Results(events=args.events, started=now(), machine=machine())
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="persister-bench-") as tmp:
        # Settings applied with ALTER SYSTEM, so the reference phases can
        # switch to PostgreSQL's defaults and back.
        stack = LocalStack(Path(tmp), database_url=None, server_settings={})
        try:
            info = stack.start()
            asyncio.run(server.apply(info.database_url, server.CURRENT_SETTINGS))
            upgrade(info.database_url)
            asyncio.run(run(info, args, Path(tmp), results))
        except Exception as exc:
            # Still report what was measured; the run fails either way.
            log.exception("benchmark failed")
            results.error = f"{type(exc).__name__}: {exc}"
        finally:
            stack.stop()
    results.finished = now()
    results.total_seconds = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    # Piped output would otherwise wrap the table at 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=150)
    print_report(results, console)
    console.print(f"wrote {write_json(results, args.out)}")
    if chart := write_chart(results, args.out):
        console.print(f"wrote {chart}")
    console.print(f"total {results.total_seconds:.0f} s")
    return 0 if results.correct else 1
