"""Events generated from a seed, in every form the envelope takes: the input
of the row-equality test (test_prefect_rows.py).

Text is drawn from a pool of hard cases: characters outside the BMP, emoji
joined by zero-width joiners, combining marks (and the same letter composed
and decomposed), right-to-left scripts, noncharacters, line and paragraph
separators, control characters and quotes that JSON escapes. No NUL: a
PostgreSQL text value cannot hold one. Each message is serialised one of
several ways (escaped or raw UTF-8, compact, spaced or indented, fields in any
order, unknown fields beside them), and some payloads are raw JSON text with
escapes no serialiser writes.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

SEED = 20261207
ID, ROLE = "prefect.resource.id", "prefect.resource.role"
WIDE = "\U0001f600"  # 4 bytes in UTF-8
BASE_MS = 1_780_000_000_000
PAYLOAD_MARK = "@@payload@@"

WORDS = [
    "flow", "task-run", "deployment", "état", "e\u0301tat", "\u00c5", "A\u030a",
    "Z\u0351\u0307\u0308\u0334",
    "日本語", "中文", "한국어", "עברית", "العربية", "हिन्दी", "ελληνικά", "кириллица",
    WIDE, "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f1fa\U0001f1f8", "\U00010348",
    "\U0001d11e", "\U00020000", "\U0010fffd", "\U0001f44d\U0001f3fd", "\ufffd", "\ufeff", "\u200b",
    "\u2028", "\u2029", "\uffff", "\ufffe", "\t", "\n", "\r", "\x01", "\x1f", "\x7f", "\x85",
    '"quoted"', "back\\slash", "/", "</script>", "<>&'", "%s", "{}", "[]", "ü", "\u0345", " ",
]  # fmt: skip

# Raw payload texts, kept as they are by the worker and parsed by Prefect:
# escapes (solidus, surrogate pairs), duplicate keys (the last one counts, in
# JSONB too), numbers in every notation, whitespace.
RAW_PAYLOADS = [
    '{"s":"\\/\\b\\f\\n\\r\\t\\"\\\\ \\u00e9 \\ud83d\\ude00 \\u2028 \\uFFFF"}',
    '{"a":1,"a":2,"b":{"c":true,"c":false}}',
    '{"n":[0,-0,1e2,1E-5,-1.5e+3,123456789012345678901234567890,-9223372036854775809]}',
    '{"f":[0.1,1.0,2.5e-308,1.7976931348623157e308,5e-324]}',
    '{"wide":1e400,"precise":0.1000000000000000000001}',
    ' { "spaced" : [ 1 , { } , [ ] , "" , null ] } ',
    '{"\\u65e5\\u672c":"\\u00C5\\u0041\\u030A","":""}',
    "{}",
]


@dataclass(frozen=True)
class Case:
    """One message: what it shows (for the counts and the diff), its bytes,
    and the Kafka timestamp (ms) that is its `received` when it has none."""

    kind: str
    value: bytes
    timestamp: int
    # Related resources that repeat an earlier (role, id) of the event.
    repeats: int = 0


def _texts(most: int) -> list[str]:
    rng = random.Random(SEED + most)
    found = []
    for _ in range(4096):
        words = rng.choices(WORDS, k=rng.randint(1, most))
        found.append("".join(w + rng.choice([".", "-", " ", "", "/"]) for w in words))
    return found


# Drawn once: a draw from these is quicker than building each text.
TEXTS = {most: _texts(most) for most in (1, 2, 4)}


def text(rng: random.Random, most: int = 4) -> str:
    """1 to `most` words of the pool, joined."""
    return rng.choice(TEXTS[most])


def name(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.002:
        return "e" * 1024  # the most characters
    if roll < 0.004:
        return WIDE * 511 + "abcd"  # the most bytes
    return rng.choice(["prefect.flow-run.", "prefect.task-run.", ""]) + text(rng)


def resource_id(rng: random.Random) -> str:
    if rng.random() < 0.003:
        return WIDE * 255 + "abcd"  # the most bytes by default
    return rng.choice(["prefect.flow-run.", "prefect.deployment.", ""]) + text(rng)


def labels(rng: random.Random, rid: str, role: str | None = None) -> dict[str, str]:
    found = {ID: rid} if role is None else {ROLE: role, ID: rid}
    for _ in range(rng.choice([0, 0, 0, 1, 2, 5])):
        found[text(rng, 2)] = rng.choice(["", text(rng)])
    if rng.random() < 0.003:
        found["prefect.state-message"] = text(rng) * 100  # a long label
    if role is None and rng.random() < 0.02:
        found[ROLE] = text(rng)  # a role on the primary resource: not in its row
    return found


def related(rng: random.Random) -> tuple[list[dict[str, str]], int]:
    """0-50 related resources, and how many of them repeat an earlier
    (role, id): with other labels, so which one a row keeps shows."""
    count = rng.choice([0, 0, 0, 1, 1, 2, 3, rng.randint(0, 50) if rng.random() < 0.2 else 0])
    items: list[dict[str, str]] = []
    repeats = 0
    for _ in range(count):
        if items and rng.random() < 0.1:
            first = rng.choice(items)
            items.append(labels(rng, first[ID], first[ROLE]))
            repeats += 1
        elif items and rng.random() < 0.05:  # the same id in another role
            items.append(labels(rng, rng.choice(items)[ID], text(rng, 1)))
        else:
            role = WIDE * 63 + "abcd" if rng.random() < 0.002 else text(rng, 2)
            items.append(labels(rng, resource_id(rng), role))
    keys = [(r[ROLE], r[ID]) for r in items]
    return items, len(keys) - len(set(keys))


def value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(9 if depth > 0 else 7)
    if kind == 0:
        return rng.randint(-(2**70), 2**70)
    if kind == 1:
        return rng.random() * 10 ** rng.randint(-20, 20)
    if kind == 2:
        return rng.choice([True, False, None, 0, -1, 0.0, ""])
    if kind in (3, 4, 5, 6):
        return text(rng)
    if kind == 7:
        return [value(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    return {text(rng, 2): value(rng, depth - 1) for _ in range(rng.randint(0, 4))}


def nested(rng: random.Random, depth: int) -> Any:
    """`depth` levels of dicts and lists; Prefect's JSON reader refuses
    about 200 (see test_prefect_rows.py), so the deepest here is 150."""
    inner: Any = value(rng, 0)
    for level in range(depth):
        inner = {rng.choice(WORDS): inner, "l": level} if level % 2 else [inner, level]
    return inner


def payload(rng: random.Random) -> tuple[str, str | None]:
    """(kind, raw JSON text or None for no payload field)."""
    roll = rng.random()
    if roll < 0.1:
        return "payload absent", None
    if roll < 0.2:
        return "payload empty", "{}"
    if roll < 0.3:
        return "payload raw text", rng.choice(RAW_PAYLOADS)
    if roll < 0.35:
        return "payload deep", json.dumps({"deep": nested(rng, rng.randint(10, 150))})
    if roll < 0.351:
        big = {f"k{i}": text(rng) for i in range(1000)} | {"blob": text(rng) * 2000}
        return "payload large", json.dumps(big, ensure_ascii=False)
    return "payload small", json.dumps({text(rng, 2): value(rng, 2) for _ in range(4)})


def uuid_text(rng: random.Random, uuid: UUID, quick: bool) -> str:
    form = "canon" if quick else rng.choice(["canon", "upper", "hex", "braces", "urn"])
    return {
        "canon": str(uuid),
        "upper": str(uuid).upper(),
        "hex": uuid.hex,
        "braces": "{" + str(uuid) + "}",
        "urn": uuid.urn,
    }[form]


FIRST = datetime(1970, 1, 1, tzinfo=UTC)
EDGES = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
    FIRST,
]


def instant(rng: random.Random) -> datetime:
    if rng.random() < 0.01:
        return rng.choice(EDGES)
    moment = FIRST + timedelta(microseconds=rng.randrange(130 * 365 * 86_400 * 10**6))
    roll = rng.random()
    if roll < 0.02:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(second=0, microsecond=0) if roll < 0.06 else moment


def day(moment: datetime) -> str:
    # strftime writes the year 1 as "1".
    return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"


# The forms msgspec reads, the worker's quick path; the others go to pydantic.
QUICK_FORMS = ["Z", "+00:00", "offset", "naive"]
FORMS = [*QUICK_FORMS, "z", "-00:00", "+0000", "epoch"]
OFFSETS = [-12 * 60, -9 * 60 - 30, -60, 60, 5 * 60 + 45, 14 * 60, 23 * 60 + 59]


def stamp(rng: random.Random, quick: bool) -> tuple[str, Any]:
    """(form, a timestamp as JSON takes it): with `quick`, one of the common
    forms; else one of every form the envelope reads."""
    moment = instant(rng)
    form = rng.choice(QUICK_FORMS if quick else FORMS)
    if moment in EDGES:
        form = "Z"  # an offset or a number could take them out of range
    if form == "epoch":
        return epoch(rng, moment)
    suffix = "" if form == "naive" else form
    if form == "offset":
        minutes = rng.choice(OFFSETS)
        moment = moment.astimezone(UTC) + timedelta(minutes=minutes)
        sign, hhmm = ("+" if minutes >= 0 else "-"), divmod(abs(minutes), 60)
        suffix = f"{sign}{hhmm[0]:02d}:{hhmm[1]:02d}"
    sep = "T" if quick else rng.choice("TTTt _")
    if not quick and moment.second == 0 and moment.microsecond == 0 and rng.random() < 0.5:
        if moment.hour == moment.minute == 0 and form == "naive":
            return "date only", day(moment)
        return f"{form} minutes", f"{day(moment)}{sep}{moment:%H:%M}{suffix}"
    digits = rng.choice([0, 1, 2, 3, 4, 5, 6, 6] if quick else [0, 3, 6, 7, 9, 12])
    fraction = f"{moment.microsecond:06d}"[:digits] + "".join(
        rng.choice("0123456789") for _ in range(max(0, digits - 6))
    )
    point = ("." if quick else rng.choice("..,")) if digits else ""
    body = f"{day(moment)}{sep}{moment:%H:%M:%S}{point}{fraction}"
    return f"{form} {digits} digits", body + suffix


def epoch(rng: random.Random, moment: datetime) -> tuple[str, Any]:
    seconds = int(moment.timestamp())
    form = rng.choice(["seconds", "fraction", "ms", "ms fraction", "text"])
    if form == "seconds":
        return "epoch seconds", seconds
    if form == "fraction":
        return "epoch fraction", seconds + rng.choice([0.5, 0.25, 0.125])
    if form == "ms":
        return "epoch ms", seconds * 1000 + rng.randrange(1000)
    if form == "ms fraction":
        return "epoch ms fraction", seconds * 1000 + 0.25
    return "epoch text", str(seconds)


def envelope(rng: random.Random, ids: list[UUID]) -> tuple[list[str], dict[str, Any], int]:
    """The event's fields but the payload, what they show, and how many
    related resources repeat an earlier (role, id)."""
    # Most events in the forms most producers write, which the worker reads
    # on its quick path (see schemas/events.py).
    quick = rng.random() < 0.6
    uuid = rng.choice(ids) if ids and rng.random() < 0.005 else UUID(int=rng.getrandbits(128))
    ids.append(uuid)
    occurred_form, occurred = stamp(rng, quick)
    items, repeats = related(rng)
    fields: dict[str, Any] = {
        "id": uuid_text(rng, uuid, quick),
        "occurred": occurred,
        "event": name(rng),
        "resource": labels(rng, resource_id(rng)),
        "related": items,
    }
    kinds = [f"occurred {occurred_form}", f"{len(items)} related"]
    if rng.random() < 0.6:
        received_form, fields["received"] = stamp(rng, quick)
        kinds.append(f"received {received_form}")
    else:
        kinds.append("received absent")
    if rng.random() < 0.5:
        follows = uuid_text(rng, UUID(int=rng.getrandbits(128)), quick)
        fields["follows"] = rng.choice([None, follows])
        kinds.append("follows " + ("null" if fields["follows"] is None else "set"))
    else:
        kinds.append("follows absent")
    if rng.random() < 0.05:
        fields["extra"] = {"unknown": text(rng)}
    if rng.random() < 0.1 and not items:
        del fields["related"]
    return kinds, fields, repeats


def serialise(rng: random.Random, fields: dict[str, Any], raw_payload: str | None) -> bytes:
    if raw_payload is not None:
        fields = {**fields, "payload": PAYLOAD_MARK}
    order = list(fields)
    rng.shuffle(order)
    text_ = json.dumps(
        {k: fields[k] for k in order},
        ensure_ascii=rng.random() < 0.5,
        indent=2 if rng.random() < 0.05 else None,
        separators=rng.choice([(",", ":"), (", ", ": ")]),
    )
    if raw_payload is not None:
        text_ = text_.replace(json.dumps(PAYLOAD_MARK), raw_payload, 1)
    return text_.encode()


def valid_cases(n: int, seed: int = SEED) -> list[Case]:
    rng = random.Random(seed)
    ids: list[UUID] = []
    cases = []
    for i in range(n):
        kinds, fields, repeats = envelope(rng, ids)
        payload_kind, raw_payload = payload(rng)
        kind = "; ".join([*kinds, payload_kind])
        value = serialise(rng, fields, raw_payload)
        cases.append(Case(kind, value, BASE_MS + i * 1237, repeats))
    return cases
