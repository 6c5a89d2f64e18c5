"""The event envelope: every limit on both sides of its bound. Events are
validated from JSON bytes by both readers, with the same limits: the worker's
`read_envelope` must take exactly what pydantic's `Event` takes, give the same
values, and fail with the same errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import orjson
import pytest
from asyncpg.pgproto.pgproto import UUID as FastUUID  # type: ignore[import-untyped, unused-ignore]
from pydantic import ValidationError

from schemas.events import RESOURCE_ID, RESOURCE_ROLE, Envelope, Event, read_envelope
from worker.core.settings import Limits

EVENT_ID = "0b1e3c1e-7a4c-4f2a-9a53-3c2f4c9b6f10"
FOLLOWS_ID = "6f1c4a52-2f8e-4d7f-8d0c-1b7e3d9f0a21"


def envelope(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": EVENT_ID,
        "occurred": "2026-01-02T03:04:05+00:00",
        "event": "prefect.flow-run.Completed",
        "resource": {RESOURCE_ID: "prefect.flow-run.1"},
    }
    data.update(fields)
    return data


def validate(data: Any, limits: Limits | None = None) -> Event:
    """pydantic's event, after checking that the worker's reader gives the
    same fields (the payload as JSON text of the same object)."""
    raw = json.dumps(data).encode()
    event = Event.model_validate_json(raw, context=limits)
    envelope = read_envelope(raw, limits)
    assert msgspec.structs.asdict(envelope) == {
        **event.model_dump(),
        "payload": envelope.payload,
    }
    assert orjson.loads(envelope.payload) == event.payload
    return event


def errors(info: pytest.ExceptionInfo[ValidationError]) -> list[dict[str, Any]]:
    return [
        {"loc": e["loc"], "type": e["type"], "msg": e["msg"]}
        for e in info.value.errors(include_url=False, include_input=False)
    ]


def rejected(data: Any, limits: Limits | None = None) -> list[dict[str, Any]]:
    """The validation errors, without URLs and inputs; the same from both readers."""
    raw = json.dumps(data).encode()
    with pytest.raises(ValidationError) as by_event:
        Event.model_validate_json(raw, context=limits)
    with pytest.raises(ValidationError) as by_reader:
        read_envelope(raw, limits)
    assert errors(by_reader) == errors(by_event)
    return errors(by_event)


def value_error(field: str, message: str) -> list[dict[str, Any]]:
    return [{"loc": (field,), "type": "value_error", "msg": f"Value error, {message}"}]


def labels(n: int, **extra: str) -> dict[str, str]:
    """n labels in all, one of them the resource id."""
    result = {RESOURCE_ID: "r", **extra}
    for i in range(n - len(result)):
        result[f"label.{i}"] = "v"
    assert len(result) == n
    return result


def related(n: int) -> list[dict[str, str]]:
    return [{RESOURCE_ID: f"r{i}", RESOURCE_ROLE: "tag"} for i in range(n)]


def test_a_minimal_envelope_is_valid_with_defaults() -> None:
    event = validate(envelope())
    assert event.id == UUID(EVENT_ID)
    assert event.occurred == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert event.event == "prefect.flow-run.Completed"
    assert event.resource == {RESOURCE_ID: "prefect.flow-run.1"}
    assert event.resource_id == "prefect.flow-run.1"
    assert event.related == []
    assert event.payload == {}
    assert event.follows is None
    assert event.received is None


def test_events_are_frozen() -> None:
    event = validate(envelope())
    with pytest.raises(ValidationError):
        event.event = "changed"  # type: ignore[misc]


# --- event name ----------------------------------------------------------------


def test_event_name_of_length_0_is_rejected() -> None:
    assert rejected(envelope(event="")) == [
        {
            "loc": ("event",),
            "type": "string_too_short",
            "msg": "String should have at least 1 character",
        }
    ]


def test_event_name_of_length_1_is_accepted() -> None:
    assert validate(envelope(event="e")).event == "e"


def test_event_name_of_length_1024_is_accepted() -> None:
    assert validate(envelope(event="e" * 1024)).event == "e" * 1024


def test_event_name_of_length_1025_is_rejected() -> None:
    assert rejected(envelope(event="e" * 1025)) == [
        {
            "loc": ("event",),
            "type": "string_too_long",
            "msg": "String should have at most 1024 characters",
        }
    ]


def test_event_name_length_counts_characters_not_bytes() -> None:
    assert validate(envelope(event="é" * 1024)).event == "é" * 1024


# 4-byte characters (an emoji each), the worst case for an index entry.
WIDE = "\U0001f600"


def test_event_name_of_2048_bytes_is_accepted() -> None:
    name = WIDE * 511 + "abcd"
    assert validate(envelope(event=name)).event == name


def test_event_name_of_2049_bytes_is_rejected() -> None:
    assert rejected(envelope(event=WIDE * 511 + "abcde")) == value_error(
        "event", "event name is 2049 bytes in UTF-8, more than 2048"
    )


def test_event_name_of_1024_three_byte_characters_is_rejected() -> None:
    assert rejected(envelope(event="€" * 1024)) == value_error(
        "event", "event name is 3072 bytes in UTF-8, more than 2048"
    )


def test_missing_event_name_is_rejected() -> None:
    data = envelope()
    del data["event"]
    assert rejected(data) == [{"loc": ("event",), "type": "missing", "msg": "Field required"}]


# --- resource --------------------------------------------------------------------


def test_resource_without_resource_id_is_rejected() -> None:
    assert rejected(envelope(resource={"name": "x"})) == value_error(
        "resource", "resource needs a non-empty 'prefect.resource.id' label"
    )


def test_resource_with_empty_resource_id_is_rejected() -> None:
    assert rejected(envelope(resource={RESOURCE_ID: ""})) == value_error(
        "resource", "resource needs a non-empty 'prefect.resource.id' label"
    )


def test_resource_with_resource_id_is_accepted() -> None:
    assert validate(envelope(resource={RESOURCE_ID: "x", "name": "y"})).resource_id == "x"


def test_resource_id_of_1024_bytes_is_accepted_by_default() -> None:
    resource_id = WIDE * 255 + "abcd"
    assert validate(envelope(resource={RESOURCE_ID: resource_id})).resource_id == resource_id


def test_resource_id_of_1025_bytes_is_rejected_by_default() -> None:
    assert rejected(envelope(resource={RESOURCE_ID: WIDE * 255 + "abcde"})) == value_error(
        "resource", "resource 'prefect.resource.id' is 1025 bytes in UTF-8, more than 1024"
    )


def test_resource_id_of_1025_ascii_characters_is_rejected() -> None:
    assert rejected(envelope(resource={RESOURCE_ID: "r" * 1025})) == value_error(
        "resource", "resource 'prefect.resource.id' is 1025 bytes in UTF-8, more than 1024"
    )


def test_resource_id_of_256_wide_characters_is_accepted_without_being_measured() -> None:
    # 256 characters can never be more than 1024 bytes.
    assert validate(envelope(resource={RESOURCE_ID: WIDE * 256})).resource_id == WIDE * 256


def test_custom_resource_id_limit_accepts_up_to_it_and_rejects_one_byte_more() -> None:
    limits = Limits(max_resource_id_bytes=2048)
    assert validate(envelope(resource={RESOURCE_ID: "r" * 2048}), limits).resource_id == "r" * 2048
    assert rejected(envelope(resource={RESOURCE_ID: "r" * 2049}), limits) == value_error(
        "resource", "resource 'prefect.resource.id' is 2049 bytes in UTF-8, more than 2048"
    )


def test_related_resource_id_is_bounded_like_the_primary_one() -> None:
    ok = [{RESOURCE_ID: "r", RESOURCE_ROLE: "tag"}, {RESOURCE_ID: "r" * 1024, RESOURCE_ROLE: "tag"}]
    assert validate(envelope(related=ok)).related == ok
    too_long = [*ok, {RESOURCE_ID: WIDE * 256 + "x", RESOURCE_ROLE: "tag"}]
    assert rejected(envelope(related=too_long)) == value_error(
        "related", "related[2] 'prefect.resource.id' is 1025 bytes in UTF-8, more than 1024"
    )


def test_related_role_of_256_bytes_is_accepted() -> None:
    item = {RESOURCE_ID: "r", RESOURCE_ROLE: WIDE * 63 + "abcd"}
    assert validate(envelope(related=[item])).related == [item]


def test_related_role_of_257_bytes_is_rejected() -> None:
    item = {RESOURCE_ID: "r", RESOURCE_ROLE: WIDE * 63 + "abcde"}
    assert rejected(envelope(related=[item])) == value_error(
        "related", "related[0] 'prefect.resource.role' is 257 bytes in UTF-8, more than 256"
    )


def test_labels_that_no_index_holds_are_not_bounded_in_size() -> None:
    """Prefect's own flow-run state events carry the state message as a label
    of up to 100,000 characters; only the id and the role are indexed."""
    message = "Flow run failed: " + "traceback line\n" * 6_000
    key = "k" * 5_000
    resource = {RESOURCE_ID: "r", "prefect.state-message": message, key: "v"}
    related = [{RESOURCE_ID: "r", RESOURCE_ROLE: "flow", "prefect.resource.name": message}]
    event = validate(envelope(resource=resource, related=related))
    assert event.resource == resource
    assert event.related == related


def test_missing_resource_is_rejected() -> None:
    data = envelope()
    del data["resource"]
    assert rejected(data) == [{"loc": ("resource",), "type": "missing", "msg": "Field required"}]


# --- label count -----------------------------------------------------------------


def test_resource_with_500_labels_is_accepted_by_default() -> None:
    assert len(validate(envelope(resource=labels(500))).resource) == 500


def test_resource_with_501_labels_is_rejected_by_default() -> None:
    assert rejected(envelope(resource=labels(501))) == value_error(
        "resource", "resource has 501 labels, more than 500"
    )


def test_default_label_limit_applies_with_default_limits_in_the_context() -> None:
    assert len(validate(envelope(resource=labels(500)), Limits()).resource) == 500
    assert rejected(envelope(resource=labels(501)), Limits()) == value_error(
        "resource", "resource has 501 labels, more than 500"
    )


def test_custom_label_limit_accepts_up_to_it() -> None:
    assert len(validate(envelope(resource=labels(3)), Limits(max_labels=3)).resource) == 3


def test_custom_label_limit_rejects_one_more() -> None:
    assert rejected(envelope(resource=labels(4)), Limits(max_labels=3)) == value_error(
        "resource", "resource has 4 labels, more than 3"
    )


def test_label_limit_applies_to_related_resources() -> None:
    limits = Limits(max_labels=3)
    ok = [labels(3, **{RESOURCE_ROLE: "tag"})]
    assert validate(envelope(related=ok), limits).related == ok
    too_many = [labels(4, **{RESOURCE_ROLE: "tag"})]
    assert rejected(envelope(related=too_many), limits) == value_error(
        "related", "related[0] has 4 labels, more than 3"
    )


# --- related ---------------------------------------------------------------------


def test_100_related_resources_are_accepted_by_default() -> None:
    assert validate(envelope(related=related(100))).related == related(100)


def test_101_related_resources_are_rejected_by_default() -> None:
    assert rejected(envelope(related=related(101))) == value_error(
        "related", "101 related resources, more than 100"
    )


def test_custom_related_limit_accepts_up_to_it() -> None:
    assert validate(envelope(related=related(2)), Limits(max_related=2)).related == related(2)


def test_custom_related_limit_rejects_one_more() -> None:
    assert rejected(envelope(related=related(3)), Limits(max_related=2)) == value_error(
        "related", "3 related resources, more than 2"
    )


def test_related_limit_of_zero_rejects_any_related_resource() -> None:
    assert validate(envelope(), Limits(max_related=0)).related == []
    assert rejected(envelope(related=related(1)), Limits(max_related=0)) == value_error(
        "related", "1 related resources, more than 0"
    )


def test_related_without_resource_id_is_rejected() -> None:
    data = envelope(related=[*related(1), {RESOURCE_ROLE: "tag"}])
    assert rejected(data) == value_error(
        "related", "related[1] needs a non-empty 'prefect.resource.id' label"
    )


def test_related_with_empty_resource_id_is_rejected() -> None:
    data = envelope(related=[{RESOURCE_ID: "", RESOURCE_ROLE: "tag"}])
    assert rejected(data) == value_error(
        "related", "related[0] needs a non-empty 'prefect.resource.id' label"
    )


def test_related_without_role_is_rejected() -> None:
    data = envelope(related=[{RESOURCE_ID: "r"}])
    assert rejected(data) == value_error(
        "related", "related[0] needs a non-empty 'prefect.resource.role' label"
    )


def test_related_with_empty_role_is_rejected() -> None:
    data = envelope(related=[{RESOURCE_ID: "r", RESOURCE_ROLE: ""}])
    assert rejected(data) == value_error(
        "related", "related[0] needs a non-empty 'prefect.resource.role' label"
    )


def test_related_with_id_and_role_is_accepted() -> None:
    item = {RESOURCE_ID: "r", RESOURCE_ROLE: "flow", "name": "n"}
    assert validate(envelope(related=[item])).related == [item]


# --- id / follows ----------------------------------------------------------------


def test_id_must_be_a_uuid() -> None:
    errors = rejected(envelope(id="not-a-uuid"))
    assert [(e["loc"], e["type"]) for e in errors] == [(("id",), "uuid_parsing")]


@pytest.mark.parametrize("form", [EVENT_ID, EVENT_ID.upper(), EVENT_ID.replace("-", "")])
def test_an_id_in_msgspecs_forms_is_read_as_asyncpgs_uuid(form: str) -> None:
    """The fast path: asyncpg's UUID, which asyncpg writes without a Python call."""
    read = read_envelope(json.dumps(envelope(id=form)).encode())
    assert type(read.id) is FastUUID
    assert read.id == UUID(EVENT_ID)


@pytest.mark.parametrize(
    "form",
    [
        EVENT_ID.upper(),
        EVENT_ID.replace("-", ""),
        "{" + EVENT_ID + "}",
        "urn:uuid:" + EVENT_ID,
    ],
)
def test_an_id_in_any_form_pydantic_reads_is_the_same_id(form: str) -> None:
    event = validate(envelope(id=form))
    assert event.id == UUID(EVENT_ID)
    assert hash(read_envelope(json.dumps(envelope(id=form)).encode()).id) == hash(UUID(EVENT_ID))


@pytest.mark.parametrize(
    "form",
    [
        # 32 hex digits, hyphens in other places: asyncpg's parser reads it.
        EVENT_ID[:8] + EVENT_ID[9:13] + "--" + EVENT_ID[14:],
        EVENT_ID.replace("-", "") + "----",
        EVENT_ID[:35] + "g",
        EVENT_ID[:35] + "é",
    ],
)
def test_an_id_pydantic_rejects_is_rejected_by_both_readers(form: str) -> None:
    assert [e["type"] for e in rejected(envelope(id=form))] == ["uuid_parsing"]


def test_missing_id_is_rejected() -> None:
    data = envelope()
    del data["id"]
    assert rejected(data) == [{"loc": ("id",), "type": "missing", "msg": "Field required"}]


def test_follows_may_be_a_uuid() -> None:
    assert validate(envelope(follows=FOLLOWS_ID)).follows == UUID(FOLLOWS_ID)


def test_follows_may_be_null() -> None:
    assert validate(envelope(follows=None)).follows is None


def test_follows_must_be_a_uuid_when_set() -> None:
    errors = rejected(envelope(follows="nope"))
    assert [(e["loc"], e["type"]) for e in errors] == [(("follows",), "uuid_parsing")]


# --- payload ---------------------------------------------------------------------


def test_payload_defaults_to_an_empty_object() -> None:
    assert validate(envelope()).payload == {}


def test_payload_object_is_kept() -> None:
    payload = {"a": [1, 2, {"b": None}], "c": "d"}
    assert validate(envelope(payload=payload)).payload == payload


@pytest.mark.parametrize("payload", [[1, 2], "text", 3, None])
def test_payload_must_be_an_object(payload: Any) -> None:
    assert rejected(envelope(payload=payload)) == [
        {"loc": ("payload",), "type": "dict_type", "msg": "Input should be an object"}
    ]


# --- unknown fields --------------------------------------------------------------


def test_unknown_fields_are_ignored() -> None:
    event = validate(envelope(extra_field="x", account="y"))
    assert event == validate(envelope())
    assert "extra_field" not in event.model_dump()
    assert event.model_extra is None


# --- timestamps ------------------------------------------------------------------


def test_naive_timestamp_is_read_as_utc_by_default() -> None:
    event = validate(envelope(occurred="2026-01-02T03:04:05"))
    assert event.occurred == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert event.occurred.tzinfo is UTC


def test_naive_timestamp_is_read_as_utc_with_the_utc_rule() -> None:
    event = validate(envelope(occurred="2026-01-02T03:04:05"), Limits(naive_timestamps="utc"))
    assert event.occurred == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_naive_timestamp_is_rejected_with_the_reject_rule() -> None:
    limits = Limits(naive_timestamps="reject")
    assert rejected(envelope(occurred="2026-01-02T03:04:05"), limits) == value_error(
        "occurred", "timestamp has no time zone"
    )


def test_naive_received_is_rejected_with_the_reject_rule() -> None:
    limits = Limits(naive_timestamps="reject")
    assert rejected(envelope(received="2026-01-02T03:04:05"), limits) == value_error(
        "received", "timestamp has no time zone"
    )


def test_zoned_timestamp_is_accepted_with_the_reject_rule() -> None:
    event = validate(envelope(), Limits(naive_timestamps="reject"))
    assert event.occurred == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-01-02T03:04:05+02:00", datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05-05:30", datetime(2026, 1, 2, 8, 34, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-01T23:00:00.123456-01:00", datetime(2026, 1, 2, 0, 0, 0, 123456, tzinfo=UTC)),
    ],
)
def test_zoned_timestamp_is_converted_to_a_plain_utc_datetime(raw: str, expected: datetime) -> None:
    event = validate(envelope(occurred=raw, received=raw))
    for value in (event.occurred, event.received):
        assert value == expected
        assert type(value) is datetime
        assert value is not None and value.tzinfo is UTC
        # Same instant *and* same wall clock: it really is in UTC.
        assert value.replace(tzinfo=None) == expected.replace(tzinfo=None)


def test_naive_timestamp_result_has_exactly_datetime_utc() -> None:
    event = validate(envelope(occurred="2026-01-02T03:04:05"))
    assert type(event.occurred) is datetime
    assert event.occurred.tzinfo is UTC


@pytest.mark.parametrize("field", ["occurred", "received"])
def test_a_nul_inside_a_timestamp_is_rejected_not_cut_short(field: str) -> None:
    # msgspec alone would stop at the NUL and read 12:00 naive, as UTC.
    errors = rejected(envelope(**{field: "2024-01-01T12:00:00\u0000+05:00"}))
    assert [(e["loc"], e["type"]) for e in errors] == [((field,), "datetime_from_date_parsing")]


def test_invalid_timestamp_is_rejected() -> None:
    errors = rejected(envelope(occurred="yesterday"))
    assert [(e["loc"], e["type"]) for e in errors] == [
        (("occurred",), "datetime_from_date_parsing")
    ]


@pytest.mark.parametrize("field", ["occurred", "received"])
@pytest.mark.parametrize("raw", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_timestamp_with_no_utc_datetime_is_rejected(field: str, raw: str) -> None:
    assert rejected(envelope(**{field: raw})) == value_error(
        field, "timestamp is outside the years 1 to 9999 in UTC"
    )


def test_received_is_optional() -> None:
    assert validate(envelope()).received is None
    assert validate(envelope(received=None)).received is None


def test_received_is_kept_in_utc_when_present() -> None:
    event = validate(envelope(received="2026-01-02T04:00:00+01:00"))
    assert event.received == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    assert event.received is not None and event.received.tzinfo is UTC


# --- whole message ---------------------------------------------------------------


def test_a_json_array_is_not_an_envelope() -> None:
    assert rejected([envelope()]) == [
        {"loc": (), "type": "model_type", "msg": "Input should be an object"}
    ]


# --- the worker's reader -----------------------------------------------------------


def test_the_payload_is_kept_as_the_producers_json_text() -> None:
    raw = json.dumps(envelope()).encode()[:-1] + b', "payload": {"b": 1,  "a": [2**70]}}'
    raw = raw.replace(b"[2**70]", str([2**70]).encode())
    assert read_envelope(raw).payload == f'{{"b": 1,  "a": [{2**70}]}}'


def test_a_form_only_pydantic_reads_gives_the_same_envelope() -> None:
    # A Unix timestamp: msgspec reads RFC 3339 text only.
    event = validate(envelope(occurred=1767323045, payload={"k": "v"}))
    assert event.occurred == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "occurred",
    [1767323045, 1767323045.0, 1767323045000, "1767323045", "2026-01-02T05:04:05+02:00"],
)
def test_a_moment_in_any_form_prefect_reads_is_the_same_instant(occurred: Any) -> None:
    """docs/envelope.md, "Timestamps": seconds, milliseconds past 2e10,
    a number in text, an offset; with naive timestamps refused too, as a
    number has a zone."""
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert validate(envelope(occurred=occurred)).occurred == moment
    assert validate(envelope(occurred=occurred), Limits(naive_timestamps="reject")).occurred == (
        moment
    )


def test_a_fraction_of_a_second_in_a_number_is_kept_to_the_microsecond() -> None:
    event = validate(envelope(occurred=1767323045.5))
    assert event.occurred == datetime(2026, 1, 2, 3, 4, 5, 500_000, tzinfo=UTC)


@pytest.mark.parametrize("occurred", [True, 253_402_300_800_000])
def test_true_or_a_number_past_the_year_9999_is_no_timestamp(occurred: Any) -> None:
    assert [e["loc"] for e in rejected(envelope(occurred=occurred))] == [("occurred",)]


@pytest.mark.parametrize(
    ("occurred", "microsecond"),
    [
        ("2026-01-02T03:04:05.1234567Z", 123456),
        ("2026-01-02T03:04:05.999999999+02:00", 999999),
        ("2026-01-02T03:04:05.123456Z", 123456),
        ("2026-01-02 03:04:05.5-01:30", 500000),
        ("2026-01-02", 0),
    ],
)
def test_timestamps_are_read_alike_sub_microsecond_digits_cut(
    occurred: str, microsecond: int
) -> None:
    # An event's key includes `occurred`: the two readers (and Prefect's,
    # which is pydantic) must agree to the microsecond.
    event = validate(envelope(occurred=occurred, received=occurred))
    assert event.occurred.microsecond == microsecond


def test_a_payload_that_is_not_utf8_is_invalid_json() -> None:
    raw = json.dumps(envelope(payload={"k": "?"})).encode().replace(b'"?"', b'"\xff"')
    with pytest.raises(ValidationError) as info:
        read_envelope(raw)
    assert [e["type"] for e in errors(info)] == ["json_invalid"]


def test_envelopes_are_frozen() -> None:
    envelope_ = read_envelope(json.dumps(envelope()).encode())
    assert isinstance(envelope_, Envelope)
    with pytest.raises(AttributeError):
        envelope_.event = "changed"  # type: ignore[misc]
