"""Messages that break the envelope, each form applied to several generated
events: the dead-letter half of the row-equality test (test_prefect_rows.py),
and the forms where the worker and Prefect do not take the same events."""

from __future__ import annotations

import json
import random
from typing import Any
from uuid import UUID

from tests.integration.event_forms import (
    BASE_MS,
    ID,
    ROLE,
    WIDE,
    Case,
    envelope,
    serialise,
)

REFUSAL_SEED = 7_12_2026
# Each field form is applied to this many generated events.
TIMES = 8
MISSING = "<missing>"


def deep(levels: int) -> str:
    """A payload `levels` objects deep, as text (json.dumps stops at Python's
    recursion limit)."""
    return '{"a":' * levels + "1" + "}" * levels


def related_with(**item: str) -> list[dict[str, str]]:
    return [{ID: "prefect.flow.1", ROLE: "flow"}, item]


# (form, field, the value it gets, or MISSING)
FIELD_FORMS: list[tuple[str, str, Any]] = [
    ("occurred words", "occurred", "yesterday"),
    ("occurred empty", "occurred", ""),
    ("occurred 30 February", "occurred", "2026-02-30T00:00:00Z"),
    ("occurred hour 24", "occurred", "2026-01-02T24:00:00Z"),
    ("occurred leap second", "occurred", "2026-01-02T23:59:60Z"),
    ("occurred point without digits", "occurred", "2026-01-02T03:04:05.Z"),
    ("occurred leading space", "occurred", " 2026-01-02T03:04:05Z"),
    ("occurred trailing space", "occurred", "2026-01-02T03:04:05Z "),
    ("occurred one-digit month", "occurred", "2026-1-2T03:04:05Z"),
    ("occurred zone name", "occurred", "2026-01-02T03:04:05UTC"),
    ("occurred space before offset", "occurred", "2026-01-02T03:04:05 +00:00"),
    ("occurred offset seconds", "occurred", "2026-01-02T03:04:05+00:00:30"),
    ("occurred NUL", "occurred", "2024-01-01T12:00:00\u0000+05:00"),
    ("occurred true", "occurred", True),
    ("occurred null", "occurred", None),
    ("occurred object", "occurred", {}),
    ("occurred 1e20", "occurred", 1e20),
    ("occurred missing", "occurred", MISSING),
    # Forms only Prefect's fallback parser (pendulum) reads.
    ("occurred offset hours only", "occurred", "2026-01-02T03:04:05+05"),
    ("occurred hour only", "occurred", "2026-01-02T03Z"),
    ("occurred basic format", "occurred", "20260102T030405Z"),
    ("occurred week date", "occurred", "2026-W01-1"),
    ("occurred ordinal date", "occurred", "2026-002"),
    # Valid texts whose instant is before the year 1 or after 9999 in UTC.
    ("occurred before year 1 in UTC", "occurred", "0001-01-01T00:00:00+01:00"),
    ("occurred after year 9999 in UTC", "occurred", "9999-12-31T23:59:59-01:00"),
    ("received words", "received", "yesterday"),
    ("received null", "received", None),
    ("id missing", "id", MISSING),
    ("id empty", "id", ""),
    ("id not a uuid", "id", "not-a-uuid"),
    ("id a number", "id", 123),
    ("id one hex too many", "id", "0b1e3c1e-7a4c-4f2a-9a53-3c2f4c9b6f101"),
    ("follows empty", "follows", ""),
    ("follows not a uuid", "follows", "x"),
    ("event missing", "event", MISSING),
    ("event empty", "event", ""),
    ("event null", "event", None),
    ("event 1025 characters", "event", "e" * 1025),
    ("event 2049 bytes", "event", WIDE * 511 + "abcde"),
    ("resource missing", "resource", MISSING),
    ("resource empty", "resource", {}),
    ("resource id empty", "resource", {ID: ""}),
    ("resource id missing", "resource", {"prefect.resource.name": "x"}),
    ("resource label a number", "resource", {ID: "r", "n": 1}),
    ("resource label null", "resource", {ID: "r", "n": None}),
    ("resource a list", "resource", [ID, "r"]),
    ("resource 501 labels", "resource", {ID: "r"} | {f"l{i}": "v" for i in range(500)}),
    ("resource id 1025 bytes", "resource", {ID: WIDE * 256 + "x"}),
    ("related null", "related", None),
    ("related an object", "related", {ID: "r", ROLE: "tag"}),
    ("related item without id", "related", related_with(**{ROLE: "tag"})),
    ("related item without role", "related", related_with(**{ID: "r"})),
    ("related item with empty role", "related", related_with(**{ID: "r", ROLE: ""})),
    ("related item with empty id", "related", related_with(**{ID: "", ROLE: "tag"})),
    ("related 101", "related", [{ID: f"r{i}", ROLE: "tag"} for i in range(101)]),
    ("related role 257 bytes", "related", related_with(**{ID: "r", ROLE: WIDE * 64 + "x"})),
    ("related id 1025 bytes", "related", related_with(**{ID: WIDE * 256 + "x", ROLE: "tag"})),
    # The payload forms are its raw text.
    ("payload null", "payload", "null"),
    ("payload a list", "payload", "[]"),
    ("payload a string", "payload", '"x"'),
    ("payload NaN", "payload", '{"x":NaN}'),
    ("payload Infinity", "payload", '{"x":Infinity}'),
    ("payload -Infinity", "payload", '{"x":[-Infinity]}'),
    ("payload 2000 deep", "payload", deep(2000)),
]

EVENT_ID = b"0b1e3c1e-7a4c-4f2a-9a53-3c2f4c9b6f10"
ENVELOPE = (
    f'{{"id":"{EVENT_ID.decode()}","occurred":"2026-01-02T03:04:05Z",'
    '"event":"e","resource":{"prefect.resource.id":"r"}'
)

BRACES = ENVELOPE.replace('"0b1e', '"{0b1e').replace('10",', '10}",').encode()

# (form, the whole message)
RAW_FORMS: list[tuple[str, bytes]] = [
    ("empty message", b""),
    ("not JSON", b"not json"),
    ("cut short", ENVELOPE.encode()),
    ("trailing garbage", (ENVELOPE + "}x").encode()),
    ("JSON null", b"null"),
    ("JSON array", f"[{ENVELOPE}}}]".encode()),
    ("byte order mark", ("\ufeff" + ENVELOPE + "}").encode()),
    ("not UTF-8 in a label", (ENVELOPE + ',"related":[{"x":"\xff"}]}').encode("latin-1")),
    ("not UTF-8 in the payload", (ENVELOPE + ',"payload":{"x":"\xff"}}').encode("latin-1")),
    ("lone surrogate in the name", (ENVELOPE[:-1] + ',"event":"\\ud800"}').encode()),
    ("lone surrogate in the payload", (ENVELOPE + ',"payload":{"x":"\\udc00"}}').encode()),
    ("raw control character", (ENVELOPE + ',"payload":{"x":"\x01"}}').encode()),
    ("single quotes", ENVELOPE.replace('"', "'").encode() + b"}"),
    # Deeper than Prefect reads. The worker's msgspec path reads them (up to
    # about 1,000 levels less the caller's stack), its pydantic path, which
    # an id in braces takes, does not.
    ("payload 200 deep", f'{ENVELOPE},"payload":{deep(200)}}}'.encode()),
    ("payload 500 deep", f'{ENVELOPE},"payload":{deep(500)}}}'.encode()),
    ("payload 200 deep, id in braces", BRACES + f',"payload":{deep(200)}}}'.encode()),
]


def refusal_cases(seed: int = REFUSAL_SEED) -> list[Case]:
    rng = random.Random(seed)
    ids: list[UUID] = []
    cases: list[Case] = []
    for form, field, given in FIELD_FORMS:
        for _ in range(TIMES):
            _, fields, _ = envelope(rng, ids)
            raw_payload = json.dumps({"n": len(cases)})
            if field == "payload":
                raw_payload = given
            elif given == MISSING:
                fields.pop(field, None)
            else:
                fields[field] = given
            value = serialise(rng, fields, raw_payload)
            cases.append(Case(form, value, BASE_MS - len(cases) * 1000))
    for form, value in RAW_FORMS:
        # An id of its own: two of these the worker takes are two events.
        unique = str(UUID(int=rng.getrandbits(128))).encode()
        cases.append(Case(form, value.replace(EVENT_ID, unique), BASE_MS))
    return cases
