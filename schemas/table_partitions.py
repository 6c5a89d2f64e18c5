"""Time partitions of `events` and `event_resources` on PostgreSQL. Pure: the
ranges, names and DDL; `worker.services.table_partitions` runs them.

Both tables are partitioned by range of `occurred`, with the same bounds, in
partitions of a fixed width aligned to the Unix epoch (a day by default:
midnight UTC to midnight UTC). A DEFAULT partition takes whatever no
partition covers (events far in the past or future), so no event is ever
refused for its date. In normal operation it stays empty: partitions are
created ahead of time, from the retention cutoff to a few widths past now.

A range is only ever created where no partition exists yet, so a changed
width fills the gaps around the existing partitions instead of overlapping
them; a range the DEFAULT partition holds rows in is not created (PostgreSQL
would refuse it), and those rows stay where they are until trimmed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# In the order the worker's insert locks them: DDL that takes them in another
# order can deadlock with a batch being written.
PARTITIONED = ("events", "event_resources")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, order=True)
class Range:
    """[start, end) of `occurred`."""

    start: datetime
    end: datetime


def floor(moment: datetime, width: timedelta) -> datetime:
    return EPOCH + ((moment - EPOCH) // width) * width


def slots(start: datetime, end: datetime, width: timedelta) -> list[Range]:
    """The epoch-aligned ranges of `width` that cover [start, end)."""
    found = []
    at = floor(start, width)
    while at < end:
        found.append(Range(at, at + width))
        at += width
    return found


def gaps(
    existing: Iterable[Range], start: datetime, end: datetime, width: timedelta
) -> list[Range]:
    """The ranges to create so that [start, end) is covered: each aligned
    slot, less what existing partitions already cover."""
    taken = sorted(existing)
    missing = []
    for slot in slots(start, end, width):
        at = slot.start
        for r in taken:
            if r.end <= at or r.start >= slot.end:
                continue
            if r.start > at:
                missing.append(Range(at, r.start))
            at = max(at, r.end)
        if at < slot.end:
            missing.append(Range(at, slot.end))
    return missing


def partition_name(table: str, r: Range) -> str:
    start = r.start.astimezone(UTC)
    return f"{table}_p{start:%Y%m%d_%H%M}"


def expired_name(name: str) -> str:
    """What a partition detached because it expired is called until dropped."""
    return f"{name}_expired"


def default_name(table: str) -> str:
    return f"{table}_default"


def _literal(moment: datetime) -> str:
    # DDL takes no bind parameters; the value is a datetime, never text from
    # outside, so its ISO form is the whole literal.
    return f"'{moment.astimezone(UTC).isoformat()}'"


def create_sql(table: str, r: Range) -> str:
    return (
        f"CREATE TABLE {partition_name(table, r)} PARTITION OF {table}"
        f" FOR VALUES FROM ({_literal(r.start)}) TO ({_literal(r.end)})"
    )


def create_default_sql(table: str) -> str:
    return f"CREATE TABLE {default_name(table)} PARTITION OF {table} DEFAULT"


# Each partition of a table with its bounds; the DEFAULT partition (and any
# made by hand with MINVALUE/MAXVALUE bounds) has no match and is left out.
PARTITIONS_SQL = r"""
SELECT c.relname, m[1]::timestamptz, m[2]::timestamptz
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL regexp_match(
    pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS m
WHERE i.inhparent = CAST(:parent AS regclass) AND m IS NOT NULL
ORDER BY 2
"""

# Tables of the schema named as expired partitions, attached to no table.
EXPIRED_SQL = r"""
SELECT c.relname
FROM pg_class c
WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace
  AND c.relname ~ '^(events|event_resources)_p[0-9]{8}_[0-9]{4}_expired$'
  AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
ORDER BY 1
"""
