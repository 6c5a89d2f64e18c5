"""`make bench-prefect-read`: how fast a real Prefect server reads the events
the worker wrote beside it, against the same events written by Prefect's own
event persister.

For each size (`--sizes`; `occurred` evenly over the last `--days` days), two
databases of one throwaway PostgreSQL server, both migrated by Prefect
(`prefect server database upgrade`):

- `worker`: `persister migrate` with PERSISTER_EVENT_TABLES=prefect, then the
  worker's rows for the events (its msgspec reader and `worker.pipeline.decoding`)
  written by its COPY (`worker.pipeline.inserts`), as `persister run` writes them;
- `prefect`: the same events written by Prefect's own `write_events`
  (`prefect_code.py fill`), for sizes up to `--prefect-up-to`: Prefect's
  writer is built for a server's own events, not for loading millions.

Each is VACUUM ANALYZEd; then a real Prefect server (its defaults) answers,
`--repeat` times each after `--warmup`: the UI's event feed (`POST
/api/events/filter`: the last day, newest first, 50 per page, with its
total) and the count by event name (`POST /api/events/count-by/event`, the
last day). Reported: the median and p99 of each request's time as the client
sees it, PostgreSQL's CPU seconds per request, and the scans PostgreSQL plans
for Prefect's queries behind both (`prefect_code.py plans`). A sequential scan
of `events` or `event_resources` fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from schemas.events import read_envelope
from schemas.migrate import upgrade
from worker.core.settings import Limits
from worker.devtools.bench import db, server
from worker.devtools.bench.dataset import PAYLOAD_BYTES
from worker.devtools.bench.results import write_steps
from worker.devtools.bench.server import ServerCpu
from worker.devtools.loadgen import encode, make_event
from worker.devtools.prefect_server import PREFECT_BIN, PrefectServer, database_upgrade, prefect_env
from worker.pipeline.connections import create_engine
from worker.pipeline.decoding import event_values, resource_values
from worker.pipeline.inserts import copy_events_and_resources

log = logging.getLogger(__name__)

PREFECT_CODE = Path(__file__).with_name("prefect_code.py")
PREFECT_PYTHON = PREFECT_BIN.with_name("python")
SEED = 20_261_207
CHUNK = 5_000
DAY = timedelta(days=1)
SCANNED = ("events", "event_resources")


def generated(count: int, days: int, now: datetime) -> Iterator[dict[str, Any]]:
    """The events, in the order they occurred, received a second later."""
    rng = random.Random(SEED)
    start, step = now - timedelta(days=days), timedelta(days=days) / count
    for i in range(count):
        occurred = start + step * i
        event = make_event(rng, occurred=occurred, payload_bytes=PAYLOAD_BYTES)
        event["received"] = (occurred + timedelta(seconds=1)).isoformat()
        yield event


async def fill_by_worker(url: str, events: Iterator[dict[str, Any]]) -> int:
    """The rows `persister run` writes for `events`, by its COPY."""
    await asyncio.to_thread(upgrade, url, "prefect")
    engine = create_engine(url, pool_size=1)
    limits, written = Limits(), 0
    try:
        while chunk := [read_envelope(encode(e), limits) for e in islice(events, CHUNK)]:
            rows = [event_values(e, e.received or datetime.now(UTC)) for e in chunk]
            resources = [r for e in chunk for r in resource_values(e)]
            async with engine.begin() as conn:
                copied = await copy_events_and_resources(conn, rows, resources)
            assert copied is not None, "COPY into Prefect's tables was refused"
            written += copied[0]
    finally:
        await engine.dispose()
    return written


def fill_by_prefect(url: str, home: Path, events: Iterator[dict[str, Any]]) -> int:
    """The same events written by Prefect's own `write_events`."""
    proc = subprocess.Popen(
        [str(PREFECT_PYTHON), str(PREFECT_CODE), "fill"],
        env=prefect_env(url, home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    for event in events:
        proc.stdin.write(encode(event) + b"\n")
    out, _ = proc.communicate()
    assert proc.returncode == 0, f"prefect_code.py fill exited {proc.returncode}"
    return int(out)


def scans(url: str, home: Path, since: datetime, until: datetime) -> list[str]:
    """Each scan PostgreSQL plans for Prefect's feed and count queries:
    'node type on relation [using index]'."""
    args = [str(PREFECT_PYTHON), str(PREFECT_CODE), "plans", since.isoformat(), until.isoformat()]
    done = subprocess.run(
        args, env=prefect_env(url, home), capture_output=True, text=True, check=True
    )
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if "Relation Name" in node:
            index = f" using {node['Index Name']}" if "Index Name" in node else ""
            found.append(f"{node['Node Type']} on {node['Relation Name']}{index}")
        for child in node.get("Plans", []):
            walk(child)

    for line in done.stdout.splitlines():
        walk(json.loads(line)["Plan"])
    assert found, f"no plan was reported: {done.stderr}"
    return found


def percentile(values: list[float], share: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def timed(
    prefect: PrefectServer, url: str, path: str, body: dict[str, Any], args: argparse.Namespace
) -> dict[str, float]:
    """Median and p99 milliseconds of one API call, and PostgreSQL's CPU
    milliseconds per call."""
    for _ in range(args.warmup):
        status, answer = await asyncio.to_thread(prefect.request, "POST", path, body)
        assert status == 200, answer
    async with db.connect(url) as conn:
        cpu = await ServerCpu.of(conn)
    seconds: list[float] = []
    cpu_before = cpu.seconds()
    for _ in range(args.repeat):
        started = time.perf_counter()
        status, answer = await asyncio.to_thread(prefect.request, "POST", path, body)
        seconds.append(time.perf_counter() - started)
        assert status == 200, answer
    cpu_ms = (cpu.seconds() - cpu_before) * 1000 / args.repeat
    return {
        "median_ms": round(statistics.median(seconds) * 1000, 1),
        "p99_ms": round(percentile(seconds, 0.99) * 1000, 1),
        "pg_cpu_ms": round(cpu_ms, 1),
    }


async def measure(
    url: str, who: str, size: int, home: Path, args: argparse.Namespace
) -> dict[str, Any]:
    upgraded = await asyncio.to_thread(database_upgrade, url, home)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    now = datetime.now(UTC)
    events = generated(size, args.days, now)
    started = time.monotonic()
    if who == "worker":
        written = await fill_by_worker(url, events)
    else:
        written = await asyncio.to_thread(fill_by_prefect, url, home, events)
    fill_s = time.monotonic() - started
    assert written == size, (who, written, size)
    async with db.connect(url) as conn:
        await conn.execute("VACUUM ANALYZE events")
        await conn.execute("VACUUM ANALYZE event_resources")
    window = {"since": (now - DAY).isoformat(), "until": now.isoformat()}
    feed = {"filter": {"occurred": window, "order": "DESC"}, "limit": 50}
    count = {"filter": {"occurred": window}}
    with PrefectServer(url, home) as prefect:
        row: dict[str, Any] = {"stored": size, "filled_by": who, "fill_s": round(fill_s, 1)}
        row["feed"] = await timed(prefect, url, "/events/filter", feed, args)
        row["count_by_event"] = await timed(prefect, url, "/events/count-by/event", count, args)
    row["scans"] = await asyncio.to_thread(scans, url, home, now - DAY, now)
    log.info("%s", row)
    return row


async def run(server_url: str, tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for size in args.sizes:
        for who in ("worker", "prefect")[: 2 if size <= args.prefect_up_to else 1]:
            name = f"{who}_{size}"
            async with db.connect(server_url) as conn:
                await conn.execute(f'CREATE DATABASE "{name}"')
            url = server_url.rsplit("/", 1)[0] + f"/{name}"
            try:
                rows.append(await measure(url, who, size, tmp / name, args))
            finally:
                async with db.connect(server_url) as conn:
                    await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    return rows


def sequential(found: list[str]) -> list[str]:
    return [s for s in found if s.startswith("Seq Scan") and s.split()[2] in SCANNED]


def summary(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| stored | filled by | feed median | feed p99 | feed PG CPU | count median "
        "| count p99 | count PG CPU | sequential scans |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        f, c = r["feed"], r["count_by_event"]
        seq = sequential(r["scans"])
        lines.append(
            f"| {r['stored']:,} | {r['filled_by']} | {f['median_ms']} ms | {f['p99_ms']} ms "
            f"| {f['pg_cpu_ms']} ms | {c['median_ms']} ms | {c['p99_ms']} ms "
            f"| {c['pg_cpu_ms']} ms | {', '.join(seq) or 'none'} |"
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.devtools.bench.prefect_read", description=__doc__
    )
    parser.add_argument(
        "--sizes",
        type=lambda v: [int(s) for s in v.split(",")],
        default=[1_000_000, 10_000_000],
        help="events stored, comma-separated",
    )
    parser.add_argument(
        "--prefect-up-to",
        type=int,
        default=1_000_000,
        help="the largest size Prefect's own writer fills too (it is far slower than COPY)",
    )
    parser.add_argument("--days", type=int, default=7, help="days the events spread over")
    parser.add_argument("--repeat", type=int, default=100, help="timed requests of each")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests first")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output dir")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with server.fresh("persister-bench-prefect-") as (url, _), tempfile.TemporaryDirectory() as t:
        rows = asyncio.run(run(url, Path(t), args))
    path = write_steps(args, "prefect_read.json", rows)
    print("\n".join(summary(rows)))
    print(f"wrote {path}")
    return 1 if any(sequential(r["scans"]) for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
