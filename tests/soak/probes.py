"""What the soak samples every 10 s: each worker's RSS, open file
descriptors, asyncio tasks and end-to-end latency histogram (from its
/metrics), the database's connections, and the group's lag."""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.quantiles import histogram_quantile

METRICS_URL = re.compile(r"serving metrics on (http://[\d.]+:\d+/metrics)")
BUCKET = re.compile(r'^persister_end_to_end_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.MULTILINE)
TASKS = re.compile(r"^persister_asyncio_tasks (\S+)$", re.MULTILINE)


@dataclass
class WorkerSample:
    pid: int
    rss_mib: float
    fds: int
    tasks: int | None
    # Cumulative end-to-end latency histogram: upper bound -> count.
    buckets: dict[float, float] = field(default_factory=dict)


@dataclass
class Sample:
    t: float  # seconds since the soak started
    workers: dict[int, WorkerSample]
    db_connections: int | None
    lag: int | None
    p50_s: float | None = None
    p99_s: float | None = None


def metrics_url(log: str) -> str | None:
    found = METRICS_URL.findall(log)
    return found[-1] if found else None


def process(pid: int) -> tuple[float, int] | None:
    """(RSS in MiB, open file descriptors) of a running process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None
    rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return (int(rss.group(1)) / 1024 if rss else 0.0), fds


def scrape(url: str) -> tuple[int | None, dict[float, float]]:
    """(asyncio tasks, latency buckets) from a worker's /metrics."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            text = response.read().decode()
    except OSError:
        return None, {}
    tasks = TASKS.search(text)
    buckets = {float(le): float(n) for le, n in BUCKET.findall(text)}
    return (int(float(tasks.group(1))) if tasks else None), buckets


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative `buckets`: linear
    within the bucket the rank falls in; None without observations."""
    return histogram_quantile(q, buckets)


def accumulate(total: dict[float, float], window: dict[float, float]) -> None:
    """Add one window's bucket counts to `total`: the whole run's histogram."""
    for le, n in window.items():
        total[le] = total.get(le, 0.0) + n


def window(previous: dict[float, float], now: dict[float, float]) -> dict[float, float]:
    """Observations between two scrapes of one process (a restart resets them)."""
    if not previous or now.get(float("inf"), 0) < previous.get(float("inf"), 0):
        return dict(now)
    return {le: n - previous.get(le, 0.0) for le, n in now.items()}
