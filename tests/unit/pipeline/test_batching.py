"""Per-partition buffering and the flush triggers, each on both sides of
its bound. Time is passed in explicitly (`now`), so nothing sleeps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.records import Msg
from worker.core.settings import Settings
from worker.pipeline.batching import Accumulator, Record, Triggers, record_size
from worker.pipeline.persister import Persister

TP = ("t", 0)
OTHER = ("t", 1)

# Powers of two keep the float arithmetic on the age bound exact.
T0 = 100.0
AGE = 0.5


def acc(batch_size: int = 1000, max_batch_bytes: int = 1_000_000, age: float = AGE) -> Accumulator:
    return Accumulator(Triggers(batch_size, max_batch_bytes, age))


def rec(offset: int, size: int = 1, key: bytes | None = None, partition: int = 0) -> Msg:
    return Msg("t", partition, offset, b"x" * size, key=key)


def recs(first: int, sizes: list[int], partition: int = 0) -> list[Msg]:
    return [rec(first + i, size, partition=partition) for i, size in enumerate(sizes)]


def offsets(records: Iterable[Record]) -> list[int]:
    return [r.offset for r in records]


# --- record_size -------------------------------------------------------------


def test_record_size_counts_value_and_key() -> None:
    assert record_size(Msg("t", 0, 0, b"abc", key=b"kk")) == 5


def test_record_size_of_tombstone_without_key_is_zero() -> None:
    assert record_size(Msg("t", 0, 0, None)) == 0


# --- nothing buffered --------------------------------------------------------


def test_unknown_partition_is_empty_and_not_due() -> None:
    a = acc()
    assert a.buffered(TP) == 0
    assert a.is_due(TP, T0) is False
    assert a.due(T0) == []
    assert a.peek(TP) == []
    assert a.partitions() == []
    assert a.buffered_bytes == 0
    assert a.next_due_in(T0) is None


# --- batch_size --------------------------------------------------------------


def test_one_record_below_batch_size_is_not_due() -> None:
    a = acc(batch_size=4)
    assert a.add(TP, recs(0, [1, 1, 1]), T0) == 3
    assert a.is_due(TP, T0) is False
    assert a.due(T0) == []


def test_batch_size_records_are_due() -> None:
    a = acc(batch_size=4)
    assert a.add(TP, recs(0, [1, 1, 1, 1]), T0) == 4
    assert a.is_due(TP, T0) is True
    assert a.due(T0) == [TP]


# --- max_batch_bytes ---------------------------------------------------------


def test_one_byte_below_max_batch_bytes_is_not_due() -> None:
    a = acc(max_batch_bytes=100)
    a.add(TP, recs(0, [50, 49]), T0)
    assert a.buffered_bytes == 99
    assert a.is_due(TP, T0) is False


def test_max_batch_bytes_exactly_is_due() -> None:
    a = acc(max_batch_bytes=100)
    a.add(TP, recs(0, [50, 50]), T0)
    assert a.buffered_bytes == 100
    assert a.is_due(TP, T0) is True


def test_keys_count_towards_max_batch_bytes() -> None:
    a = acc(max_batch_bytes=100)
    a.add(TP, [rec(0, 90, key=b"k" * 9)], T0)
    assert a.is_due(TP, T0) is False
    a.add(TP, [rec(1, 0, key=b"k")], T0)
    assert a.buffered_bytes == 100
    assert a.is_due(TP, T0) is True


# --- flush_every_s -----------------------------------------------------------


def test_younger_than_flush_every_s_is_not_due() -> None:
    a = acc()
    a.add(TP, recs(0, [1]), T0)
    assert a.is_due(TP, T0) is False
    assert a.is_due(TP, T0 + AGE - 0.125) is False


def test_exactly_flush_every_s_old_is_due() -> None:
    a = acc()
    a.add(TP, recs(0, [1]), T0)
    assert a.is_due(TP, T0 + AGE) is True
    assert a.due(T0 + AGE) == [TP]


def test_older_than_flush_every_s_is_due() -> None:
    a = acc()
    a.add(TP, recs(0, [1]), T0)
    assert a.is_due(TP, T0 + 10 * AGE) is True


def test_age_counts_from_the_oldest_record_not_the_newest() -> None:
    a = acc()
    a.add(TP, recs(0, [1]), T0)
    a.add(TP, recs(1, [1]), T0 + 0.25)
    assert a.is_due(TP, T0 + AGE) is True


def test_due_lists_only_the_partitions_that_are_due() -> None:
    a = acc(batch_size=2)
    a.add(TP, recs(0, [1, 1]), T0)
    a.add(OTHER, recs(0, [1], partition=1), T0)
    assert a.due(T0) == [TP]
    assert a.due(T0 + AGE) == [TP, OTHER]


# --- next_due_in -------------------------------------------------------------


def test_next_due_in_is_the_time_left_for_the_oldest_buffer() -> None:
    a = acc()
    a.add(TP, recs(0, [1]), T0)
    a.add(OTHER, recs(0, [1], partition=1), T0 + 0.25)
    assert a.next_due_in(T0) == AGE
    assert a.next_due_in(T0 + 0.25) == 0.25
    assert a.next_due_in(T0 + AGE) == 0.0


def test_next_due_in_is_never_negative() -> None:
    a = acc()
    a.add(TP, recs(0, [1]), T0)
    assert a.next_due_in(T0 + 100 * AGE) == 0.0


def test_next_due_in_ignores_empty_buffers() -> None:
    a = acc()
    a.add(TP, recs(0, [1]), T0)
    a.consume(TP, 1)
    a.reset(OTHER, 5)
    assert a.next_due_in(T0) is None


# --- peek --------------------------------------------------------------------


def test_peek_takes_at_most_batch_size_records() -> None:
    a = acc(batch_size=3)
    a.add(TP, recs(0, [1, 1, 1, 1, 1]), T0)
    assert offsets(a.peek(TP)) == [0, 1, 2]


def test_peek_takes_everything_when_below_the_bounds() -> None:
    a = acc(batch_size=3, max_batch_bytes=100)
    a.add(TP, recs(0, [10, 10]), T0)
    assert offsets(a.peek(TP)) == [0, 1]


def test_peek_fills_up_to_max_batch_bytes_exactly() -> None:
    a = acc(max_batch_bytes=100)
    a.add(TP, recs(0, [40, 40, 20, 1]), T0)
    assert offsets(a.peek(TP)) == [0, 1, 2]


def test_peek_stops_before_the_record_that_would_exceed_max_batch_bytes() -> None:
    a = acc(max_batch_bytes=100)
    a.add(TP, recs(0, [40, 40, 21, 1]), T0)
    assert offsets(a.peek(TP)) == [0, 1]


def test_peek_returns_a_lone_record_larger_than_max_batch_bytes() -> None:
    a = acc(max_batch_bytes=100)
    a.add(TP, recs(0, [500, 1]), T0)
    assert offsets(a.peek(TP)) == [0]


def test_peek_leaves_an_oversized_record_for_the_next_batch() -> None:
    a = acc(max_batch_bytes=100)
    a.add(TP, recs(0, [10, 500]), T0)
    assert offsets(a.peek(TP)) == [0]
    a.consume(TP, 1)
    assert offsets(a.peek(TP)) == [1]


def test_peek_does_not_remove_anything() -> None:
    a = acc(batch_size=2)
    a.add(TP, recs(0, [1, 1, 1]), T0)
    first = a.peek(TP)
    assert a.peek(TP) == first
    assert a.buffered(TP) == 3
    assert a.buffered_bytes == 3


# --- consume -----------------------------------------------------------------


def test_consume_removes_exactly_count_records_from_the_front() -> None:
    a = acc(batch_size=2)
    a.add(TP, recs(0, [1, 2, 4, 8]), T0)
    a.consume(TP, 2)
    assert a.buffered(TP) == 2
    assert a.buffered_bytes == 12
    assert offsets(a.peek(TP)) == [2, 3]


def test_consume_keeps_the_age_clock_of_the_leftovers() -> None:
    a = acc(batch_size=2)
    a.add(TP, recs(0, [1, 1]), T0)
    a.add(TP, recs(2, [1]), T0 + 0.25)
    a.consume(TP, 2)
    # The leftover arrived at T0 + 0.25 but the clock still reads T0: it is
    # due at T0 + AGE (early, never late).
    assert a.is_due(TP, T0 + AGE - 0.125) is False
    assert a.is_due(TP, T0 + AGE) is True
    assert a.next_due_in(T0) == AGE


def test_leftovers_already_past_the_age_stay_due() -> None:
    a = acc(batch_size=2)
    a.add(TP, recs(0, [1, 1, 1]), T0)
    a.consume(TP, 2)
    assert a.is_due(TP, T0 + AGE) is True


def test_consuming_everything_stops_the_clock_and_the_next_add_restarts_it() -> None:
    a = acc()
    a.add(TP, recs(0, [1, 1]), T0)
    a.consume(TP, 2)
    assert a.buffered(TP) == 0
    assert a.buffered_bytes == 0
    assert a.partitions() == []
    assert a.is_due(TP, T0 + 10 * AGE) is False
    assert a.next_due_in(T0) is None

    later = T0 + 10 * AGE
    a.add(TP, recs(2, [1]), later)
    assert a.is_due(TP, later + AGE - 0.125) is False
    assert a.is_due(TP, later + AGE) is True


def test_consume_zero_changes_nothing() -> None:
    a = acc()
    a.add(TP, recs(0, [3]), T0)
    a.consume(TP, 0)
    assert a.buffered(TP) == 1
    assert a.buffered_bytes == 3
    assert a.is_due(TP, T0 + AGE) is True


# --- re-fetched records --------------------------------------------------------


def test_refetched_records_below_the_position_are_skipped() -> None:
    a = acc()
    assert a.add(TP, recs(0, [1, 1, 1]), T0) == 3
    assert a.add(TP, recs(1, [1, 1, 1, 1]), T0) == 2
    assert offsets(a.peek(TP)) == [0, 1, 2, 3, 4]
    assert a.buffered_bytes == 5


def test_refetch_of_only_old_records_adds_nothing() -> None:
    a = acc()
    a.add(TP, recs(0, [1, 1]), T0)
    assert a.add(TP, recs(0, [1, 1]), T0) == 0
    assert a.buffered(TP) == 2


def test_records_already_consumed_are_not_taken_again() -> None:
    a = acc()
    a.add(TP, recs(0, [1, 1]), T0)
    a.consume(TP, 2)
    assert a.add(TP, recs(0, [1, 1, 1]), T0) == 1
    assert offsets(a.peek(TP)) == [2]


def test_a_skipped_refetch_into_an_empty_buffer_does_not_start_the_clock() -> None:
    a = acc()
    a.add(TP, recs(0, [1]), T0)
    a.consume(TP, 1)
    assert a.add(TP, recs(0, [1]), T0) == 0
    assert a.next_due_in(T0) is None


def test_unknown_position_accepts_any_offset() -> None:
    a = acc()
    assert a.add(TP, [rec(42)], T0) == 1
    assert offsets(a.peek(TP)) == [42]


# --- reset / forget ------------------------------------------------------------


def test_reset_drops_the_buffer_and_accepts_from_the_new_position() -> None:
    a = acc(batch_size=2)
    a.add(TP, recs(0, [5, 5, 5]), T0)
    a.reset(TP, 10)
    assert a.buffered(TP) == 0
    assert a.buffered_bytes == 0
    assert a.partitions() == []
    assert a.is_due(TP, T0 + AGE) is False
    assert a.add(TP, recs(8, [1, 1, 1]), T0 + AGE) == 1
    assert offsets(a.peek(TP)) == [10]
    # The age clock restarted with the new record.
    assert a.is_due(TP, T0 + AGE) is False
    assert a.is_due(TP, T0 + 2 * AGE) is True


def test_reset_to_an_earlier_position_accepts_those_offsets_again() -> None:
    a = acc()
    a.add(TP, recs(0, [1, 1, 1]), T0)
    a.reset(TP, 1)
    assert a.add(TP, recs(0, [1, 1, 1]), T0) == 2
    assert offsets(a.peek(TP)) == [1, 2]


def test_reset_to_unknown_position_accepts_anything() -> None:
    a = acc()
    a.add(TP, recs(5, [1]), T0)
    a.reset(TP, None)
    assert a.add(TP, recs(0, [1]), T0) == 1


def test_forget_drops_the_partition_and_its_position() -> None:
    a = acc()
    a.add(TP, recs(0, [7, 7]), T0)
    a.add(OTHER, recs(0, [3], partition=1), T0)
    a.forget(TP)
    assert a.buffered(TP) == 0
    assert a.buffered_bytes == 3
    assert a.partitions() == [OTHER]
    assert a.due(T0 + AGE) == [OTHER]
    assert a.add(TP, recs(0, [1]), T0) == 1


def test_forget_of_an_unknown_partition_is_a_no_op() -> None:
    a = acc()
    a.forget(TP)
    assert a.partitions() == []


# --- buffered_bytes / partitions -------------------------------------------------


def test_buffered_bytes_sums_every_partition() -> None:
    a = acc()
    a.add(TP, recs(0, [10, 20]), T0)
    a.add(OTHER, recs(0, [5], partition=1), T0)
    assert a.buffered_bytes == 35
    a.consume(TP, 1)
    assert a.buffered_bytes == 25


def test_partitions_lists_only_non_empty_buffers() -> None:
    a = acc()
    a.add(TP, recs(0, [1]), T0)
    a.add(OTHER, recs(0, [1], partition=1), T0)
    a.consume(OTHER, 1)
    assert a.partitions() == [TP]


# --- positions past the last record (markers, aborted batches) ----------------


def test_a_batch_taking_every_record_stores_the_position_past_trailing_markers() -> None:
    a = acc()
    a.reset(TP, 0)
    # Records 0-2, then a commit marker at 3: the consumer is at 4.
    a.add(TP, recs(0, [1, 1, 1]), T0, fetched_to=4)
    batch = a.peek(TP)
    assert offsets(batch) == [0, 1, 2]
    assert a.next_offset(TP, batch) == 4


def test_a_batch_leaving_records_behind_stores_past_its_last_record() -> None:
    a = acc(batch_size=2)
    a.reset(TP, 0)
    a.add(TP, recs(0, [1, 1, 1]), T0, fetched_to=9)
    batch = a.peek(TP)
    assert a.next_offset(TP, batch) == 2
    a.consume(TP, len(batch), 2)
    rest = a.peek(TP)
    assert offsets(rest) == [2]
    assert a.next_offset(TP, rest) == 9


def test_markers_alone_make_the_partition_due_to_store_the_offset() -> None:
    a = acc()
    a.reset(TP, 10)
    assert a.add(TP, [], T0, fetched_to=10) == 0
    assert TP not in a.partitions()
    # Only an abort marker and an aborted batch came: nothing to write but
    # the offset.
    assert a.add(TP, [], T0, fetched_to=17) == 0
    assert a.partitions() == [TP]
    assert not a.is_due(TP, T0 + AGE / 2)
    assert a.is_due(TP, T0 + AGE)
    assert a.next_due_in(T0) == AGE
    assert a.next_offset(TP, a.peek(TP)) == 17
    a.consume(TP, 0, 17)
    assert TP not in a.partitions()
    assert not a.is_due(TP, T0 + 10)


def test_a_position_behind_the_buffer_is_ignored() -> None:
    a = acc()
    a.reset(TP, 0)
    a.add(TP, recs(0, [1, 1]), T0, fetched_to=1)
    assert a.position(TP) == 2


def test_no_stored_offset_stores_the_first_position_known() -> None:
    a = acc()
    a.reset(TP, None)
    assert a.add(TP, [], T0, fetched_to=None) == 0
    assert TP not in a.partitions()
    a.add(TP, [], T0, fetched_to=5)
    assert a.next_offset(TP, a.peek(TP)) == 5


def test_rewind_keeps_the_stored_offset_and_accepts_lower_offsets() -> None:
    a = acc()
    a.reset(TP, 100)
    a.rewind(TP, 0, T0)
    assert a.position(TP) == 0
    # The log is empty from 0: the offset moves back to 0 on its own.
    assert a.is_due(TP, T0 + AGE)
    assert a.next_offset(TP, a.peek(TP)) == 0
    assert a.add(TP, recs(0, [1, 1]), T0) == 2
    batch = a.peek(TP)
    assert a.next_offset(TP, batch) == 2


def test_a_batch_written_across_a_rewind_leaves_the_new_buffer_alone() -> None:
    a = acc()
    a.reset(TP, 0)
    a.add(TP, recs(0, [1, 1, 1]), T0)
    generation = a.generation(TP)
    batch = a.peek(TP)
    # While it is written, the log turns out truncated: read again from 0.
    a.rewind(TP, 0, T0)
    a.add(TP, recs(0, [1]), T0)
    a.consume(TP, len(batch), 3, generation)
    assert offsets(a.peek(TP)) == [0]
    assert a.next_offset(TP, a.peek(TP)) == 1


def test_a_partition_caught_up_with_its_log_end_is_due_at_once() -> None:
    a = acc()
    a.add(TP, recs(0, [1, 1, 1]), now=0.0, fetched_to=3, log_end=3)
    assert a.is_due(TP, now=0.0)
    assert a.due(0.0) == [TP]
    assert offsets(a.peek(TP)) == [0, 1, 2]


def test_fixed_batches_wait_for_size_or_age_even_when_caught_up() -> None:
    a = Accumulator(Triggers(1000, 1_000_000, AGE, when_caught_up=False))
    a.add(TP, recs(0, [1, 1, 1]), now=0.0, fetched_to=3, log_end=3)
    assert not a.is_due(TP, now=0.0)
    assert a.next_due_in(0.0) == AGE
    assert a.due(AGE) == [TP]


def test_records_still_waiting_in_kafka_make_the_batch_grow() -> None:
    a = acc(batch_size=5)
    a.add(TP, recs(0, [1, 1, 1]), now=0.0, fetched_to=3, log_end=10)
    assert not a.is_due(TP, now=0.0)
    a.add(TP, recs(3, [1, 1, 1]), now=0.1, fetched_to=6, log_end=10)
    assert a.is_due(TP, now=0.1)  # batch_size reached
    assert offsets(a.peek(TP)) == [0, 1, 2, 3, 4]


def test_an_empty_buffer_at_the_log_end_is_not_due() -> None:
    a = acc()
    a.reset(TP, 3)
    a.add(TP, [], now=0.0, fetched_to=3, log_end=3)
    assert not a.is_due(TP, now=0.0)
    assert a.due(0.0) == []


async def test_the_worker_takes_its_flush_triggers_from_the_settings() -> None:
    settings = Settings(batch_size=500, flush_every_s=0.2, flush_when_caught_up=False)
    persister = Persister(settings, cast(AsyncEngine, None))
    try:
        assert persister.accumulator.triggers == Triggers(
            500, settings.max_batch_bytes, 0.2, when_caught_up=False
        )
    finally:
        await persister.consumer.stop()
