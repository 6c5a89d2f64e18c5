"""End-to-end latency over the whole soak, two ways side by side: the
workers' `persister_end_to_end_seconds` (Prometheus' `histogram_quantile`
over every window's buckets added up) and each event's own age at commit
from the database (its transaction's commit timestamp, which the soak's
PostgreSQL tracks, minus `received`, its Kafka timestamp).

The database keeps only the recent half of the events (the old half is
trimmed): both halves were sent alike, so the recent half's quantiles stand
for all. Events a worker wrote after its last scrape before a restart are
missing from the metric's windows: a few thousand out of a million."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.quantiles import INF, histogram_quantile

AGES = text(
    "SELECT count(*), percentile_disc(0.5) WITHIN GROUP (ORDER BY age),"
    " percentile_disc(0.99) WITHIN GROUP (ORDER BY age)"
    " FROM (SELECT EXTRACT(EPOCH FROM pg_xact_commit_timestamp(xmin) - received)::float8"
    " AS age FROM events WHERE occurred >= :cutoff) AS ages"
)


@dataclass
class Latency:
    metric_events: int
    metric_p50_s: float | None
    metric_p99_s: float | None
    database_events: int
    database_p50_s: float | None
    database_p99_s: float | None


def from_metric(buckets: dict[float, float]) -> tuple[int, float | None, float | None]:
    """(events observed, p50, p99) of the run's cumulative buckets."""
    return (
        int(buckets.get(INF, 0.0)),
        histogram_quantile(0.5, buckets),
        histogram_quantile(0.99, buckets),
    )


async def measure(engine: AsyncEngine, cutoff: datetime, buckets: dict[float, float]) -> Latency:
    """Both figures; `cutoff`: the recent events are those that occurred since."""
    async with engine.connect() as conn:
        n, p50, p99 = (await conn.execute(AGES, {"cutoff": cutoff})).one()
    return Latency(*from_metric(buckets), int(n), p50, p99)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _ratio(metric: float | None, database: float | None) -> str:
    return f"{metric / database:.2f}" if metric is not None and database else "-"


def lines(latency: Latency) -> list[str]:
    """The report's lines, metric and database side by side."""
    x = latency
    return [
        f"end-to-end latency, whole run: metric p50 {_seconds(x.metric_p50_s)}, "
        f"p99 {_seconds(x.metric_p99_s)} ({x.metric_events:,} events)",
        f"  database (commit - received): p50 {_seconds(x.database_p50_s)}, "
        f"p99 {_seconds(x.database_p99_s)} ({x.database_events:,} recent events)",
        f"  metric / database: p50 {_ratio(x.metric_p50_s, x.database_p50_s)}, "
        f"p99 {_ratio(x.metric_p99_s, x.database_p99_s)}",
    ]
