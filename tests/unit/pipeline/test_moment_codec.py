"""`timestamptz` as the worker's connections encode it (`worker.pipeline.moment_codec`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from worker.pipeline.moment_codec import (
    PG_INFINITY,
    PG_NEGATIVE_INFINITY,
    Memo,
    decode,
    encode,
    microseconds,
)


def test_a_moment_is_microseconds_since_2000_in_utc() -> None:
    assert microseconds(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert microseconds(datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=UTC)) == 1
    assert microseconds(datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == -1
    plus_two = timezone(timedelta(hours=2))
    assert microseconds(datetime(2000, 1, 1, 2, tzinfo=plus_two)) == 0
    assert microseconds(datetime(2026, 12, 7, 16, 56, 52, 162_773, tzinfo=UTC)) == (
        849_977_812_162_773
    )


def test_naive_extremes_are_postgresqls_infinities_both_ways() -> None:
    assert microseconds(datetime.max) == PG_INFINITY
    assert microseconds(datetime.min) == PG_NEGATIVE_INFINITY
    assert microseconds(datetime.max.replace(tzinfo=UTC)) == PG_INFINITY
    assert microseconds(datetime(1, 1, 1, tzinfo=UTC)) == PG_NEGATIVE_INFINITY
    assert decode((PG_INFINITY,)) == datetime.max
    assert decode((PG_NEGATIVE_INFINITY,)) == datetime.min


def test_naive_datetimes_and_dates_are_local_time_as_asyncpg_reads_them() -> None:
    naive = datetime(2026, 3, 29, 1, 30)
    assert microseconds(naive) == microseconds(naive.astimezone(UTC))
    assert microseconds(date(2026, 3, 29)) == microseconds(datetime(2026, 3, 29).astimezone(UTC))


def test_what_is_read_back_is_the_aware_utc_moment_written() -> None:
    for moment in (
        datetime(2026, 12, 7, 16, 56, 52, 162_773, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_998, tzinfo=UTC),
    ):
        back = decode(encode(moment))
        assert back == moment
        assert back.tzinfo is UTC


def test_a_moment_is_encoded_once_until_the_memo_is_full() -> None:
    memo = Memo(3)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    same_instant = datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    assert memo[first] is memo[same_instant]
    for hour in (1, 2):
        assert memo[first + timedelta(hours=hour)] == (microseconds(first) + hour * 3_600_000_000,)
    assert len(memo) == 3
    assert memo[first + timedelta(hours=3)] == (microseconds(first) + 3 * 3_600_000_000,)
    assert len(memo) == 1  # full: cleared, then the new one kept
    assert memo[first] == (microseconds(first),)
    assert len(memo) == 2


def test_the_connections_encoder_is_the_memos_own_lookup() -> None:
    # No Python function between asyncpg and a moment met before.
    assert type(encode).__name__ == "builtin_function_or_method"
    moment = datetime(2026, 12, 7, 16, 56, 52, 162_773, tzinfo=UTC)
    assert encode(moment) is encode(moment) == (microseconds(moment),)
