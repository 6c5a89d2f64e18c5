"""The ranges, names and DDL of time partitions (schemas.table_partitions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.table_partitions import (
    Range,
    create_sql,
    default_name,
    expired_name,
    floor,
    gaps,
    partition_name,
    slots,
)
from tests.table_partition_names import is_partition

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


def test_slots_are_aligned_to_the_epoch_in_utc() -> None:
    assert floor(at(29, 13), DAY) == at(29)
    assert floor(at(29, 13), 6 * HOUR) == at(29, 12)
    assert slots(at(28, 5), at(30, 1), DAY) == [
        Range(at(28), at(29)),
        Range(at(29), at(30)),
        Range(at(30), at(30) + DAY),
    ]


def test_gaps_skip_what_exists() -> None:
    existing = [Range(at(28), at(29)), Range(at(29), at(30))]
    assert gaps(existing, at(28), at(30, 12), DAY) == [Range(at(30), at(30) + DAY)]
    assert gaps(existing, at(28), at(29, 23), DAY) == []


def test_a_changed_width_fills_around_existing_partitions_without_overlap() -> None:
    # Hourly partitions for 00:00-02:00 exist; days are wanted now.
    existing = [Range(at(29, 0), at(29, 1)), Range(at(29, 1), at(29, 2))]
    assert gaps(existing, at(29), at(30, 5), DAY) == [
        Range(at(29, 2), at(30)),
        Range(at(30), at(30) + DAY),
    ]
    # A day exists; hours are wanted: nothing inside it, hours after it.
    assert gaps([Range(at(29), at(30))], at(29, 20), at(30, 2), HOUR) == [
        Range(at(30, 0), at(30, 1)),
        Range(at(30, 1), at(30, 2)),
    ]
    # A partition in the middle of a slot leaves the parts before and after.
    middle = [Range(at(29, 6), at(29, 7))]
    assert gaps(middle, at(29), at(29, 23), DAY) == [
        Range(at(29), at(29, 6)),
        Range(at(29, 7), at(30)),
    ]


def test_names_and_ddl() -> None:
    r = Range(at(29), at(30))
    assert partition_name("events", r) == "events_p20261129_0000"
    assert create_sql("events", r) == (
        "CREATE TABLE events_p20261129_0000 PARTITION OF events FOR VALUES FROM "
        "('2026-11-29T00:00:00+00:00') TO ('2026-11-30T00:00:00+00:00')"
    )
    # The names the schema comparison of the migration tests leaves out.
    assert is_partition(partition_name("event_resources", Range(at(29, 6), at(29, 7))))
    assert is_partition(expired_name(partition_name("events", r)))
    assert is_partition(default_name("events"))
    assert not is_partition("events")
    assert not is_partition("consumer_offsets")
