"""Dead-letter records say where they came from, and that can be read back."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from worker.deadletter import dead_letter_topic, headers, origin


def row(**overrides: Any) -> Any:
    values: dict[str, Any] = {
        "topic": "events",
        "partition": 3,
        "offset": 1234,
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "error_class": "InvalidJson",
        "error": "<message>: Invalid JSON",
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def test_topic_name_follows_the_template() -> None:
    assert dead_letter_topic("<topic>.dlq", "events") == "events.dlq"
    assert dead_letter_topic("dead-letters", "events") == "dead-letters"
    assert dead_letter_topic("", "events") is None


def test_headers_carry_origin_and_reason() -> None:
    found = dict(headers(row(), "group-a"))
    assert found == {
        "dlq.group": b"group-a",
        "dlq.topic": b"events",
        "dlq.partition": b"3",
        "dlq.offset": b"1234",
        "dlq.timestamp": b"2026-01-02T03:04:05+00:00",
        "dlq.error_class": b"InvalidJson",
        "dlq.error": b"<message>: Invalid JSON",
    }


def test_origin_reads_back_what_headers_wrote() -> None:
    assert origin(headers(row(timestamp=None), "g")) == ("g", "events", 3, 1234)


def test_origin_of_a_foreign_record_is_none() -> None:
    assert origin([]) is None
    assert origin([("dlq.group", b"g"), ("dlq.topic", b"t"), ("dlq.partition", b"x")]) is None
