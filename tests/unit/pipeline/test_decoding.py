"""Kafka records -> event rows and resource rows, or a rejection saying why."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import pytest

from schemas.events import RESOURCE_ID, RESOURCE_ROLE, Envelope
from tests.records import Msg, msgs
from tests.rows import events_of, resources_of
from worker.core.settings import Limits
from worker.pipeline.decoding import MAX_ERROR_CHARS, Rejection, decode, received_at, to_rows

ID_A = UUID("11111111-1111-4111-8111-111111111111")
ID_B = UUID("22222222-2222-4222-8222-222222222222")
ID_C = UUID("33333333-3333-4333-8333-333333333333")
FOLLOWS = UUID("44444444-4444-4444-8444-444444444444")

LIMITS = Limits()
MAX = 4096
# Msg's default timestamp, in milliseconds since the epoch.
RECORD_TIME = datetime.fromtimestamp(1_780_000_000, tz=UTC)
OCCURRED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def envelope(id: UUID = ID_A, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(id),
        "occurred": "2026-01-02T03:04:05Z",
        "event": "prefect.flow-run.Completed",
        "resource": {RESOURCE_ID: "prefect.flow-run.1"},
    }
    data.update(fields)
    return data


def raw(id: UUID = ID_A, **fields: Any) -> bytes:
    return json.dumps(envelope(id, **fields)).encode()


def sized(n: int) -> bytes:
    """A valid event of exactly n bytes (padded in the payload)."""
    base = len(raw(payload={"pad": ""}))
    value = raw(payload={"pad": "x" * (n - base)})
    assert len(value) == n
    return value


def record(value: bytes | None, offset: int = 0, timestamp: int = 1_780_000_000_000) -> Msg:
    return Msg("t", 0, offset, value, timestamp=timestamp)


def rejection(value: bytes | None, limits: Limits = LIMITS, max_bytes: int = MAX) -> Rejection:
    result = decode(record(value), limits, max_bytes)
    assert isinstance(result, Rejection)
    return result


def rel(id: str, role: str, **extra: str) -> dict[str, str]:
    return {RESOURCE_ID: id, RESOURCE_ROLE: role, **extra}


# --- decode ----------------------------------------------------------------------


def test_valid_message_decodes_to_an_event() -> None:
    event = decode(record(raw()), LIMITS, MAX)
    assert isinstance(event, Envelope)
    assert event.id == ID_A
    assert event.occurred == OCCURRED


def test_tombstone_is_rejected() -> None:
    r = record(None)
    assert decode(r, LIMITS, MAX) == Rejection(r, "Tombstone", "message has no value (a tombstone)")


def test_message_of_exactly_max_message_bytes_is_decoded() -> None:
    assert isinstance(decode(record(sized(MAX)), LIMITS, MAX), Envelope)


def test_message_one_byte_over_max_message_bytes_is_too_large() -> None:
    r = record(sized(MAX + 1))
    assert decode(r, LIMITS, MAX) == Rejection(
        r, "MessageTooLarge", f"message is {MAX + 1} bytes, more than max_message_bytes={MAX}"
    )


def test_size_is_checked_before_the_message_is_parsed() -> None:
    assert rejection(b"\xff" * (MAX + 1)).error_class == "MessageTooLarge"


def test_the_key_does_not_count_towards_max_message_bytes() -> None:
    r = Msg("t", 0, 0, sized(MAX), key=b"k" * MAX)
    assert isinstance(decode(r, LIMITS, MAX), Envelope)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\xff\xfe\xfd", id="not-utf8"),
        pytest.param(b'{"id": "\xff"}', id="not-utf8-inside-a-string"),
        pytest.param(raw()[:-1], id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"{'id': 1}", id="single-quotes"),
    ],
)
def test_bytes_that_are_not_json_are_invalid_json(value: bytes) -> None:
    result = rejection(value)
    assert result.error_class == "InvalidJson"
    assert result.error.startswith("<message>: Invalid JSON: ")


def test_a_json_array_is_an_invalid_envelope() -> None:
    result = rejection(json.dumps([envelope()]).encode())
    assert (result.error_class, result.error) == (
        "InvalidEnvelope",
        "<message>: Input should be an object",
    )


def test_missing_fields_are_an_invalid_envelope_naming_each_field() -> None:
    result = rejection(b"{}")
    assert (result.error_class, result.error) == (
        "InvalidEnvelope",
        "id: Field required; occurred: Field required; "
        "event: Field required; resource: Field required",
    )


def test_an_envelope_error_names_the_field() -> None:
    result = rejection(raw(related=[{RESOURCE_ID: "r"}]))
    assert (result.error_class, result.error) == (
        "InvalidEnvelope",
        "related: Value error, related[0] needs a non-empty 'prefect.resource.role' label",
    )


def test_an_envelope_error_names_the_nested_location() -> None:
    result = rejection(raw(resource={RESOURCE_ID: 5}))
    assert (result.error_class, result.error) == (
        "InvalidEnvelope",
        "resource.prefect.resource.id: Input should be a valid string",
    )


def test_decode_applies_the_limits() -> None:
    value = raw(related=[rel("a", "x"), rel("b", "x")])
    assert isinstance(decode(record(value), Limits(max_related=2), MAX), Envelope)
    result = rejection(value, Limits(max_related=1))
    assert (result.error_class, result.error) == (
        "InvalidEnvelope",
        "related: Value error, 2 related resources, more than 1",
    )


def test_decode_applies_the_resource_id_limit_in_bytes() -> None:
    value = raw(resource={RESOURCE_ID: "é" * 600})
    assert isinstance(decode(record(value), Limits(max_resource_id_bytes=1200), MAX), Envelope)
    result = rejection(value, Limits(max_resource_id_bytes=1199))
    assert (result.error_class, result.error) == (
        "InvalidEnvelope",
        "resource: Value error, resource 'prefect.resource.id' is 1200 bytes in UTF-8,"
        " more than 1199",
    )


def test_decode_applies_the_naive_timestamp_rule() -> None:
    value = raw(occurred="2026-01-02T03:04:05")
    event = decode(record(value), LIMITS, MAX)
    assert isinstance(event, Envelope) and event.occurred == OCCURRED
    result = rejection(value, Limits(naive_timestamps="reject"))
    assert (result.error_class, result.error) == (
        "InvalidEnvelope",
        "occurred: Value error, timestamp has no time zone",
    )


def test_long_error_messages_are_cut_to_max_error_chars() -> None:
    result = rejection(raw(related=list(range(90))))
    assert result.error_class == "InvalidEnvelope"
    assert result.error.startswith("related.0: Input should be an object; related.1: ")
    assert len(result.error) == MAX_ERROR_CHARS


# --- received_at -----------------------------------------------------------------


def test_received_at_is_the_record_timestamp() -> None:
    assert received_at(record(b"", timestamp=1_780_000_000_123)) == datetime(
        2026, 5, 28, 20, 26, 40, 123000, tzinfo=UTC
    )
    assert received_at(record(b"")) == datetime(2026, 5, 28, 20, 26, 40, tzinfo=UTC)


def test_received_at_is_now_when_the_record_has_no_timestamp() -> None:
    before = datetime.now(UTC)
    received = received_at(record(b"", timestamp=-1))
    after = datetime.now(UTC)
    assert before <= received <= after
    assert received.tzinfo is UTC


# --- to_rows ---------------------------------------------------------------------


def test_event_row_has_every_column() -> None:
    related = [rel("r1", "flow", name="n")]
    payload = {"k": [1, 2]}
    rows = to_rows(
        [record(raw(related=related, payload=payload, follows=str(FOLLOWS)))], LIMITS, MAX
    )
    assert events_of(rows) == [
        {
            "id": ID_A,
            "occurred": OCCURRED,
            "event": "prefect.flow-run.Completed",
            "resource_id": "prefect.flow-run.1",
            "resource": '{"prefect.resource.id":"prefect.flow-run.1"}',
            "related_resource_ids": '["r1"]',
            "related": orjson.dumps(related).decode(),
            # The producer's text, as it came.
            "payload": '{"k": [1, 2]}',
            "received": RECORD_TIME,
            "follows": FOLLOWS,
        }
    ]
    assert rows.rejections == []


def test_received_falls_back_to_the_record_timestamp() -> None:
    rows = to_rows([record(raw(), timestamp=1_780_000_000_500)], LIMITS, MAX)
    assert events_of(rows)[0]["received"] == datetime(2026, 5, 28, 20, 26, 40, 500000, tzinfo=UTC)


def test_received_of_the_event_wins_over_the_record_timestamp() -> None:
    rows = to_rows([record(raw(received="2026-01-02T04:00:00+01:00"))], LIMITS, MAX)
    assert events_of(rows)[0]["received"] == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    assert events_of(rows)[0]["received"].tzinfo is UTC


def resource_row(role: str, id: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "event_id": ID_A,
        "resource_role": role,
        "resource_id": id,
        "occurred": OCCURRED,
        "resource": orjson.dumps(labels).decode(),
    }


def test_resource_rows_are_the_primary_and_each_distinct_related_role_and_id() -> None:
    related = [
        rel("a", "tag"),
        rel("a", "tag", extra="ignored: same (role, id) as before"),
        rel("a", "flow", name="kept"),
        rel("b", "tag"),
        rel("prefect.flow-run.1", "self"),
    ]
    rows = to_rows([record(raw(related=related))], LIMITS, MAX)
    assert resources_of(rows) == {
        (ID_A, OCCURRED): [
            resource_row("", "prefect.flow-run.1", {}),
            resource_row("tag", "a", {}),
            resource_row("flow", "a", {"name": "kept"}),
            resource_row("tag", "b", {}),
            resource_row("self", "prefect.flow-run.1", {}),
        ]
    }


def test_resource_rows_keep_every_label_but_the_id_and_the_role() -> None:
    """As Prefect stores them: the id and role are columns of the row, also
    for a primary resource that carries a role label."""
    resource = {RESOURCE_ID: "r", RESOURCE_ROLE: "odd", "prefect.resource.name": "n", "k": "v"}
    related = [rel("a", "flow", **{"prefect.resource.name": "f"})]
    rows = to_rows([record(raw(resource=resource, related=related))], LIMITS, MAX)
    assert resources_of(rows)[(ID_A, OCCURRED)] == [
        resource_row("", "r", {"prefect.resource.name": "n", "k": "v"}),
        resource_row("flow", "a", {"prefect.resource.name": "f"}),
    ]
    # The event row keeps them all.
    assert orjson.loads(events_of(rows)[0]["resource"]) == resource
    assert orjson.loads(events_of(rows)[0]["related"]) == related


def test_an_event_without_related_has_one_resource_row() -> None:
    rows = to_rows([record(raw())], LIMITS, MAX)
    assert [
        (r["resource_role"], r["resource_id"]) for r in resources_of(rows)[(ID_A, OCCURRED)]
    ] == [("", "prefect.flow-run.1")]


def test_related_resource_ids_follow_the_related_list_in_order() -> None:
    related = [rel("b", "tag"), rel("a", "flow"), rel("c", "tag")]
    rows = to_rows([record(raw(related=related))], LIMITS, MAX)
    assert orjson.loads(events_of(rows)[0]["related_resource_ids"]) == ["b", "a", "c"]
    assert orjson.loads(events_of(rows)[0]["related"]) == related


def test_an_integer_beyond_64_bits_in_the_payload_is_kept_as_written() -> None:
    rows = to_rows([record(raw(payload={"big": 2**70}))], LIMITS, MAX)
    assert [e["payload"] for e in events_of(rows)] == [f'{{"big": {2**70}}}']
    assert rows.rejections == []


def test_json_nested_thousands_deep_is_invalid_json_and_nothing_breaks() -> None:
    deep = raw(payload={"n": "?"}).replace(b'"?"', b"[" * 5_000 + b"]" * 5_000)
    result = rejection(deep, max_bytes=len(deep))
    assert result.error_class == "InvalidJson"
    assert "recursion limit exceeded" in result.error


def test_json_nested_hundreds_deep_is_stored_as_sent() -> None:
    nested = b"[" * 500 + b"]" * 500
    rows = to_rows([record(raw(payload={"n": "?"}).replace(b'"?"', nested))], LIMITS, MAX)
    assert [e["payload"] for e in events_of(rows)] == ['{"n": ' + nested.decode() + "}"]


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity"])
@pytest.mark.parametrize("where", ["payload", "ignored"])
def test_nan_or_infinity_in_the_payload_or_an_ignored_field_is_invalid_json(
    number: bytes, where: str
) -> None:
    # pydantic reads them (a Unix timestamp sends the message to pydantic),
    # but they are not JSON: stored, they would be lost as null.
    fields: dict[str, Any] = {"payload": {"n": "?"}} if where == "payload" else {"x": "?"}
    value = raw(occurred=1767323045, **fields).replace(b'"?"', number)
    assert (rejection(value).error_class, rejection(value).error) == (
        "InvalidJson",
        "<message>: NaN or Infinity is not JSON",
    )


def test_duplicate_ids_in_a_batch_give_one_event_row_and_the_first_wins() -> None:
    records = [
        record(raw(ID_A, event="first", related=[rel("x", "tag")]), offset=0),
        record(raw(ID_B), offset=1),
        record(raw(ID_A, event="second", related=[rel("y", "tag")]), offset=2),
    ]
    rows = to_rows(records, LIMITS, MAX)
    assert [(e["id"], e["event"]) for e in events_of(rows)] == [
        (ID_A, "first"),
        (ID_B, "prefect.flow-run.Completed"),
    ]
    assert list(resources_of(rows)) == [(ID_A, OCCURRED), (ID_B, OCCURRED)]
    assert [
        (r["resource_role"], r["resource_id"]) for r in resources_of(rows)[(ID_A, OCCURRED)]
    ] == [
        ("", "prefect.flow-run.1"),
        ("tag", "x"),
    ]
    assert rows.rejections == []


def test_every_record_is_an_event_a_duplicate_or_a_rejection() -> None:
    values: list[bytes | None] = [
        raw(ID_A),
        None,
        raw(ID_B),
        b"{not json",
        raw(ID_A, event="again"),
        sized(MAX + 1),
        b"[]",
        raw(ID_C),
        raw(ID_B),
    ]
    records = msgs(values)
    rows = to_rows(records, LIMITS, MAX)

    assert [e["id"] for e in events_of(rows)] == [ID_A, ID_B, ID_C]
    assert [(r.record.offset, r.error_class) for r in rows.rejections] == [
        (1, "Tombstone"),
        (3, "InvalidJson"),
        (5, "MessageTooLarge"),
        (6, "InvalidEnvelope"),
    ]
    duplicates = 2
    assert len(rows.events) + duplicates + len(rows.rejections) == len(records)
    assert len(resources_of(rows)) == len(rows.events)


def test_rejections_keep_the_original_record() -> None:
    records = msgs([None, b"nope"], topic="events", partition=3, first=40)
    rows = to_rows(records, LIMITS, MAX)
    assert [r.record for r in rows.rejections] == records


def test_an_empty_batch_gives_no_rows() -> None:
    rows = to_rows([], LIMITS, MAX)
    assert (events_of(rows), resources_of(rows), rows.rejections) == ([], {}, [])
