"""Damaged messages: whatever a record holds, decoding ends in a row or a
rejection, never in an exception that would stop the partition."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from tests.records import msgs
from worker.core.settings import Limits
from worker.devtools.loadgen import encode, make_event
from worker.pipeline.decoding import to_rows

# JSON values at the edges of what each field takes.
ODD_VALUES = [
    *(b"null", b"true", b"[]", b"{}", b"-0", b"1.5", b"1e400", b"NaN", b"99999999999999999999"),
    *(b"1767323045", b"-99999999999", b'"\\u0000"', b'"\\ud800"', b'"\\ud83d\\ude00"', b'"\xff"'),
    *(b'"0001-01-01T00:00:00+01:00"', b'"9999-12-31T23:59:59-23:59"', b'"2026-02-30T00:00:00Z"'),
    *(b'"2026-01-02T03:04:05.123456789Z"', b'"00000000-0000-0000-0000-000000000000"'),
    *(b'{"prefect.resource.id": ""}', b'[{"prefect.resource.id": "a"}]', b"[" * 3000 + b"]" * 3000),
]


def _value_end(text: bytes, start: int) -> int:
    depth, end = 0, start
    while end < len(text):
        char = text[end : end + 1]
        if char in b"[{":
            depth += 1
        elif depth == 0 and char in b"]},":
            break
        elif char in b"]}":
            depth -= 1
        end += 1
    return end


def mutated(rng: random.Random, value: bytes) -> bytes:
    """An odd value in place of one field's, a few bytes changed, or the end cut off."""
    choice = rng.random()
    if choice < 0.5:
        start = rng.choice([i + 1 for i, char in enumerate(value) if char == ord(":")])
        return value[:start] + rng.choice(ODD_VALUES) + value[_value_end(value, start) :]
    if choice < 0.8:
        damaged = bytearray(value)
        for _ in range(rng.randint(1, 5)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        return bytes(damaged)
    return value[: rng.randrange(len(value))]


def test_every_damaged_message_becomes_a_row_or_a_rejection() -> None:
    rng = random.Random(11)
    # A fixed time, so that every run damages the same bytes.
    occurred = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)
    originals = [encode(make_event(random.Random(i), occurred=occurred)) for i in range(100)]
    outcomes = {"row": 0, "rejection": 0}
    for record in msgs([mutated(rng, rng.choice(originals)) for _ in range(3_000)]):
        rows = to_rows([record], Limits(), 1_000_000)
        assert len(rows.events) + len(rows.rejections) == 1, record.value
        outcomes["row" if rows.events else "rejection"] += 1
    # Both outcomes occur: the mutations reach past the first check.
    assert min(outcomes.values()) > 100, outcomes
