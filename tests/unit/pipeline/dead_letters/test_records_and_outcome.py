"""Dead-letter records say where they came from, fit their topic whole or
reduced, and can be read back; publishing problems are reported once."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from worker.core import metrics
from worker.core.conditions import Conditions
from worker.operate.dead_letter_admin import oversized
from worker.pipeline.dead_letters.outcome import Outcome, report
from worker.pipeline.dead_letters.records import (
    dead_letter_topic,
    fitted,
    headers,
    origin,
    record_bytes,
    reduced,
    request_bytes,
    whole,
)


def row(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "id": 42,
        "topic": "events",
        "partition": 3,
        "offset": 1234,
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "key": b"k-1",
        "value": b"{broken",
        "error_class": "InvalidJson",
        "error": "<message>: Invalid JSON",
    }
    values.update(overrides)
    return SimpleNamespace(**values)


ORIGIN = {
    "dlq.group": b"group-a",
    "dlq.topic": b"events",
    "dlq.partition": b"3",
    "dlq.offset": b"1234",
    "dlq.timestamp": b"2026-01-02T03:04:05+00:00",
    "dlq.error_class": b"InvalidJson",
    "dlq.error": b"<message>: Invalid JSON",
}


def test_topic_name_follows_the_template() -> None:
    assert dead_letter_topic("<topic>.dlq", "events") == "events.dlq"
    assert dead_letter_topic("dead-letters", "events") == "dead-letters"
    assert dead_letter_topic("", "events") is None


def test_headers_carry_origin_and_reason() -> None:
    assert dict(headers(row(), "group-a")) == ORIGIN


def test_origin_reads_back_what_headers_wrote() -> None:
    assert origin(headers(row(timestamp=None), "g")) == ("g", "events", 3, 1234)
    assert origin(reduced(row(), "g").headers) == ("g", "events", 3, 1234)


def test_origin_of_a_foreign_record_is_none() -> None:
    assert origin([]) is None
    assert origin([("dlq.group", b"g"), ("dlq.topic", b"t"), ("dlq.partition", b"x")]) is None


def test_requests_take_the_largest_message_plus_64_kib() -> None:
    assert request_bytes(1_572_864) == 1_638_400
    assert request_bytes(1024) == 1024 + 65_536


@pytest.mark.parametrize(
    ("key", "value", "record_headers"),
    [
        (None, None, []),
        (b"", b"", []),
        (b"k", b"v" * 127, [("a", b"")]),
        (b"k" * 300, b"v" * 20_000, [("dlq.error", b"e" * 2000)] * 7),
        (b"k" * 70_000, b"v" * 2_000_000, [("h" * 200, b"x" * 16_384)] * 3),
    ],
)
def test_the_size_bound_is_never_below_the_producers_own(
    key: bytes | None, value: bytes | None, record_headers: list[tuple[str, bytes]]
) -> None:
    """The producer refuses a record its own estimate puts over its request
    limit; ours must be at least as large, so what we judge to fit is sent."""
    ours = record_bytes(key, value, record_headers)
    theirs = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, record_headers)
    assert theirs <= ours <= theirs + 16 + 8 * len(record_headers)


def test_the_whole_form_is_the_original_key_and_value() -> None:
    record = whole(row(), "group-a")
    assert (record.key, record.value, dict(record.headers)) == (b"k-1", b"{broken", ORIGIN)
    assert not record.reduced


def test_a_dead_letter_without_key_or_value_is_keyed_by_its_partition() -> None:
    assert whole(row(key=None, value=None), "g").key == b"events/3"
    assert whole(row(key=None), "g").key is None


def test_the_reduced_form_drops_the_value_and_says_how_large_it_was() -> None:
    record = reduced(row(value=b"x" * 2_000_000), "group-a")
    assert record.reduced
    assert (record.key, record.value) == (b"k-1", b"")
    assert dict(record.headers) == {
        **ORIGIN,
        "dlq.reduced": b"true",
        "dlq.id": b"42",
        "dlq.key_bytes": b"3",
        "dlq.value_bytes": b"2000000",
    }


def test_the_reduced_form_drops_a_key_over_1_kib_and_cuts_the_error() -> None:
    record = reduced(row(key=b"k" * 1025, error="e" * 5000), "g")
    found = dict(record.headers)
    assert record.key is None
    assert found["dlq.key_bytes"] == b"1025"
    assert found["dlq.error"] == b"e" * 2000
    assert reduced(row(key=b"k" * 1024), "g").key == b"k" * 1024


def test_a_dead_letter_goes_whole_when_it_fits_else_reduced_else_not_at_all() -> None:
    letter = row(value=b"v" * 10_000)
    size = whole(letter, "g").size
    small = reduced(letter, "g").size
    assert small < 700 < size
    assert fitted(letter, "g", size) == whole(letter, "g")
    assert fitted(letter, "g", size - 1) == reduced(letter, "g")
    assert fitted(letter, "g", small) == reduced(letter, "g")
    assert fitted(letter, "g", small - 1) is None
    # Refused whole by the broker once: reduced from then on.
    assert fitted(letter, "g", size, reduce=True) == reduced(letter, "g")


def test_the_default_largest_message_goes_whole_and_one_over_the_request_reduced() -> None:
    """With the default 1.5 MiB, a dead letter of that size (with a 1 KiB key
    and a long error) fits the worker's requests whole."""
    limit = request_bytes(1_572_864)
    letter = row(key=b"k" * 1024, value=b"v" * 1_572_864, error="e" * 2000)
    assert fitted(letter, "g", limit) == whole(letter, "g")
    too_large = row(value=b"v" * limit)
    assert fitted(too_large, "g", limit) == reduced(too_large, "g")


def ours(conditions: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in conditions.items() if k.startswith("test-dead-letters:")}


def test_publishing_problems_are_logged_once_and_end_with_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conditions = Conditions("test-dead-letters")
    failing = Outcome(error="KafkaConnectionError('down')", unsure=True)
    unfit = Outcome(unfit="the dead letter of offset 7 does not fit events.dlq even reduced")
    conditions_logger = "worker.core.conditions"
    with caplog.at_level(logging.INFO, logger=conditions_logger):
        for _ in range(3):
            report(conditions, ("events", 3), "events.dlq", failing)
        assert ours(metrics.readiness.conditions) == {
            "test-dead-letters:events[3] send": "events[3]: dead letters not sent to events.dlq: "
            "KafkaConnectionError('down'); retrying with a jittered backoff of up to 5 s "
            "(they are in the persister_dead_letters table)"
        }
        for _ in range(3):
            report(conditions, ("events", 3), "events.dlq", unfit)
        report(conditions, ("events", 3), "events.dlq", Outcome(sent=2))
        report(conditions, ("events", 3), "events.dlq", Outcome(sent=1))
    # Only the conditions' lines: asyncio may log, at any collection, tasks
    # an earlier test left behind.
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == conditions_logger]
    assert lines == [
        (
            "WARNING",
            "events[3]: dead letters not sent to events.dlq: KafkaConnectionError('down'); "
            "retrying with a jittered backoff of up to 5 s "
            "(they are in the persister_dead_letters table)",
        ),
        ("INFO", "events[3]: dead letters reach events.dlq again"),
        (
            "ERROR",
            "events[3]: the dead letter of offset 7 does not fit events.dlq even reduced",
        ),
        ("INFO", "events[3]: every dead letter fits events.dlq again"),
    ]
    assert ours(metrics.readiness.conditions) == {}
    value = metrics.registry.get_sample_value("persister_conditions", {"kind": "test-dead-letters"})
    assert value == 0


def test_replay_refuses_values_over_max_message_bytes_or_the_fixed_one() -> None:
    letters = [row(id=1, value=b"v" * 100), row(id=2, value=b"v" * 101), row(id=3, value=None)]
    assert oversized(letters, None, 100) == [(2, 101)]
    assert oversized(letters, b"f" * 101, 100) == [(1, 101), (2, 101), (3, 101)]
    assert oversized(letters, b"f" * 100, 100) == []
