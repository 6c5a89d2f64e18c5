"""Prometheus metrics of this process, and the state `/readyz` judges.

The services update these; the metrics server (`worker.services.health_server`) only reads
them. One registry per process: replicas are told apart by Prometheus's
instance label.
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from worker import __version__
from worker.core.topic_partition import TP
from worker.core.weighted_histogram import (
    BulkHistogram,
    BulkHistogramCollector,
    geometric_bounds,
)

registry = CollectorRegistry()
# RSS, CPU seconds, open file descriptors, start time; the Python version.
ProcessCollector(registry=registry)
PlatformCollector(registry=registry)
build = Info("persister_build", "The worker's version and Python", registry=registry)
build.info({"version": __version__, "python": platform.python_version()})

events_persisted = Counter(
    "persister_events_persisted", "Events newly written to the database", registry=registry
)
resource_rows = Counter(
    "persister_resource_rows", "Resource rows written to the database", registry=registry
)
batches = Counter("persister_batches", "Batches committed", registry=registry)
insert_batches = Counter(
    "persister_insert_batches",
    "Batches whose events went in by INSERT ... ON CONFLICT instead of COPY (after a "
    "batch that met stored events, a refused COPY, or on SQLite)",
    registry=registry,
)
batch_size = Histogram(
    "persister_batch_size_events",
    "Records per committed batch",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
    registry=registry,
)
flush_seconds = Histogram(
    "persister_flush_seconds",
    "Time to write one batch (the database transaction)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=registry,
)
# Geometric buckets, six per doubling, 5 ms to 60 s (83 and +Inf): a
# quantile's estimate and its exact value share a bucket, so even the worst
# case (events piled at one edge) is off by at most the bucket ratio,
# 12.8%; where a bucket's events are spread, as latencies are, Prometheus'
# linear interpolation lands within a few percent (tests/unit/core/
# test_end_to_end_quantiles.py). Fewer buckets would double that bound.
END_TO_END_BUCKETS = geometric_bounds(0.005, 60.0, per_doubling=6)
end_to_end = BulkHistogram(END_TO_END_BUCKETS)
registry.register(
    BulkHistogramCollector(
        "persister_end_to_end_seconds",
        "Kafka record timestamp to committed in the database, per event",
        end_to_end,
    )
)
dead_letters = Counter(
    "persister_dead_letters",
    "Messages dead-lettered, by error class",
    ["error_class"],
    registry=registry,
)
fetch_errors = Counter(
    "persister_fetch_errors",
    "Fetches from Kafka that failed, by error",
    ["error"],
    registry=registry,
)
offset_resets = Counter(
    "persister_offset_resets",
    "Partitions whose stored offset was not in the log: past_end (topic recreated, log "
    "truncated) or before_start (records deleted before they were stored)",
    ["reason"],
    registry=registry,
)
write_failures = Counter(
    "persister_write_failures", "Batch writes that failed and will be retried", registry=registry
)
rebalances = Counter("persister_rebalances", "Partition assignments received", registry=registry)
rebalance_pause_seconds = Histogram(
    "persister_rebalance_pause_seconds",
    "From a revocation to the next assignment: consumption paused by a rebalance",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60),
    registry=registry,
)
lag = Gauge(
    "persister_lag_records",
    "Log end offset minus the stored offset, per assigned partition",
    ["topic", "partition"],
    registry=registry,
)
oldest_unfinished_write = Gauge(
    "persister_oldest_unfinished_write_seconds",
    "Age of the oldest write of an assigned partition that has begun and not yet "
    "committed, failed attempts and their backoff included (0: none)",
    ["topic", "partition"],
    registry=registry,
)
group_lag = Gauge(
    "persister_group_lag_records",
    "Log end offset minus the stored offset, per partition of the group, owned or not; "
    "published by the replica leading retention trimming",
    ["topic", "partition"],
    registry=registry,
)
paused_partitions = Gauge(
    "persister_paused_partitions", "Assigned partitions not being fetched", registry=registry
)
operator_paused = Gauge(
    "persister_operator_paused_partitions",
    "Assigned partitions paused by an operator (`persister pause`)",
    registry=registry,
)
trimmed_rows = Counter(
    "persister_trimmed_rows", "Rows deleted by retention, by table", ["table"], registry=registry
)
trim_seconds = Gauge("persister_trim_seconds", "Duration of the last trim", registry=registry)
trim_lock_timeouts = Counter(
    "persister_trim_lock_timeouts",
    "Expired partitions a trim skipped because their lock was not obtained in time",
    registry=registry,
)
trim_last_success = Gauge(
    "persister_trim_last_success_timestamp_seconds",
    "When the last trim finished",
    registry=registry,
)
conditions = Gauge(
    "persister_conditions",
    "Problems that persist until something changes (docs/operating.md, Troubleshooting), by kind",
    ["kind"],
    registry=registry,
)
ready = Gauge(
    "persister_ready", "1 when /readyz would answer 200 (set at each scrape)", registry=registry
)
leader = Gauge(
    "persister_trimmer_leader", "1 while this replica leads retention trimming", registry=registry
)
asyncio_tasks = Gauge(
    "persister_asyncio_tasks",
    "asyncio tasks alive in this process: grows without bound if something leaks them",
    registry=registry,
)


def _tasks_alive() -> int:
    # Read when /metrics is served, from inside the event loop.
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop (e.g. read from another thread)
        return 0


asyncio_tasks.set_function(_tasks_alive)


# Series whose labels are known in advance exist from the start, at 0, so a
# panel or an alert sees "none yet" rather than "no data".
for _error_class in ("InvalidJson", "InvalidEnvelope", "MessageTooLarge", "Tombstone"):
    dead_letters.labels(_error_class)
for _reason in ("past_end", "before_start"):
    offset_resets.labels(_reason)
for _table in ("events", "event_resources"):
    trimmed_rows.labels(_table)


def observe_batch(
    n_records: int,
    n_events: int,
    n_resources: int,
    rejected: tuple[tuple[int, str], ...],
    flush_s: float,
    timestamps_ms: Sequence[int | None] | None,
    inserted: bool = False,
    committed_at: float | None = None,
) -> None:
    """`timestamps_ms`: the Kafka timestamps of the batch's records that went
    to the events table (dead letters left out); `committed_at`: when the
    batch committed (default: now)."""
    batches.inc()
    if inserted:
        insert_batches.inc()
    batch_size.observe(n_records)
    flush_seconds.observe(flush_s)
    events_persisted.inc(n_events)
    resource_rows.inc(n_resources)
    for _, error_class in rejected:
        dead_letters.labels(error_class).inc()
    if timestamps_ms is not None:
        # An event found already stored (a replay) was committed before:
        # its age says nothing of this write. Which records those were is
        # not known here; replayed records are the oldest, so the count is
        # kept to the events written by dropping the oldest ages.
        now = time.time() if committed_at is None else committed_at
        end_to_end.observe_ages(now, timestamps_ms, keep=n_events)


def observe_trim(events: int, resources: int, took_s: float) -> None:
    trimmed_rows.labels("events").inc(events)
    trimmed_rows.labels("event_resources").inc(resources)
    trim_seconds.set(took_s)
    trim_last_success.set(time.time())


@dataclass
class Readiness:
    """What the services report for `/readyz`."""

    joined: bool = False
    # Monotonic time since which some partition holds records it has not
    # been able to write; None while every buffer drains normally.
    stuck_since: float | None = None
    partitions: set[TP] = field(default_factory=set)
    # Conditions that make this replica unready while they last (see
    # `worker.core.conditions`), by key: the reason `/readyz` shows.
    conditions: dict[str, str] = field(default_factory=dict)
    # The metrics server's last database probe: why it failed, or None.
    database_problem: str | None = None

    def stuck_for(self) -> float:
        return 0.0 if self.stuck_since is None else time.monotonic() - self.stuck_since


readiness = Readiness()
