"""What a dead letter looks like on the dead-letter topic, and reading the
outbox of those not sent yet.

Whole form: the original key and value, with headers saying where it came
from and why it was rejected. Reduced form, for a dead letter whose whole
record does not fit the topic: an empty value, the key only if it is at most
`REDUCED_KEY_MAX_BYTES`, the same headers (the error cut to
`REDUCED_ERROR_CHARS`) and four more: `dlq.reduced` (`true`), `dlq.id` (its
row in `dead_letters`, which keeps the whole value), `dlq.key_bytes` and
`dlq.value_bytes` (the original sizes).

The outbox itself, `dead_letters`, is read a page at a time
(`unpublished_pages`): at most PAGE_ROWS rows, values included, by offset
after the last one read, through the partial index of the rows not yet
published. While the topic refuses them, each retry reads one bounded page
rather than every row the partition has gathered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, Select, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from worker.core.topic_partition import TP

HEADER_PREFIX = "dlq."
# Room above the largest accepted value for the key, the headers and the
# record framing: what a dead letter adds to the message it carries.
HEADROOM_BYTES = 64 * 1024
# A record batch's header, and the most a record's own framing can take
# (length, attributes, timestamp and offset deltas, key and value lengths,
# header count: varints at their longest); each header adds two lengths.
BATCH_OVERHEAD_BYTES = 61
RECORD_OVERHEAD_BYTES = 36
HEADER_OVERHEAD_BYTES = 10
REDUCED_KEY_MAX_BYTES = 1024
REDUCED_ERROR_CHARS = 2000
# Dead letters one read loads at most: their values may be up to the largest
# message the topic took (more for `MessageTooLarge`), so memory stays bounded.
PAGE_ROWS = 100

Headers = list[tuple[str, bytes]]


def dead_letter_topic(template: str, source_topic: str) -> str | None:
    return template.replace("<topic>", source_topic) if template else None


def request_bytes(max_message_bytes: int) -> int:
    """The largest dead-letter record the worker sends (its producers'
    request limit), and the `max.message.bytes` of a dead-letter topic it
    creates: every message it accepts fits whole, with its key and headers."""
    return max_message_bytes + HEADROOM_BYTES


def record_bytes(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """At least what one record takes alone in a batch on the wire (the
    size a broker compares with a topic's `max.message.bytes`)."""
    size = BATCH_OVERHEAD_BYTES + RECORD_OVERHEAD_BYTES + len(key or b"") + len(value or b"")
    return size + sum(HEADER_OVERHEAD_BYTES + len(n.encode()) + len(v) for n, v in headers)


@dataclass(frozen=True)
class Outgoing:
    """One dead letter as the record to send."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    reduced: bool

    @property
    def size(self) -> int:
        return record_bytes(self.key, self.value, self.headers)


def headers(row: Any, group_id: str, error_chars: int | None = None) -> Headers:
    timestamp = row.timestamp.isoformat() if row.timestamp else ""
    fields = {
        "group": group_id,
        "topic": row.topic,
        "partition": str(row.partition),
        "offset": str(row.offset),
        "timestamp": timestamp,
        "error_class": row.error_class,
        "error": row.error[:error_chars],
    }
    return [(HEADER_PREFIX + name, value.encode()) for name, value in fields.items()]


def whole(row: Any, group_id: str) -> Outgoing:
    # A record with neither key nor value needs a key (aiokafka refuses it
    # otherwise), so it is keyed by where it came from.
    key = row.key if row.key or row.value else f"{row.topic}/{row.partition}".encode()
    return Outgoing(key, row.value, headers(row, group_id), reduced=False)


def reduced(row: Any, group_id: str) -> Outgoing:
    key_bytes = len(row.key or b"")
    extra = {
        "reduced": "true",
        "id": str(row.id),
        "key_bytes": str(key_bytes),
        "value_bytes": str(len(row.value or b"")),
    }
    found = headers(row, group_id, REDUCED_ERROR_CHARS)
    found += [(HEADER_PREFIX + name, value.encode()) for name, value in extra.items()]
    key = row.key if key_bytes <= REDUCED_KEY_MAX_BYTES else None
    return Outgoing(key, b"", found, reduced=True)


def fitted(row: Any, group_id: str, limit: int, reduce: bool = False) -> Outgoing | None:
    """The whole form if it fits in `limit` bytes (and `reduce` is not
    asked for), else the reduced form if that fits, else None."""
    if not reduce and (record := whole(row, group_id)).size <= limit:
        return record
    record = reduced(row, group_id)
    return record if record.size <= limit else None


def origin(record_headers: Sequence[tuple[str, bytes]]) -> tuple[str, str, int, int] | None:
    """(group, topic, partition, offset) a dead-letter record came from."""
    found = {name: value.decode(errors="replace") for name, value in record_headers}
    try:
        return (
            found[HEADER_PREFIX + "group"],
            found[HEADER_PREFIX + "topic"],
            int(found[HEADER_PREFIX + "partition"]),
            int(found[HEADER_PREFIX + "offset"]),
        )
    except (KeyError, ValueError):
        return None


def unpublished_query(group_id: str, tp: TP, after: int | None, limit: int) -> Select[Any]:
    """The partition's dead letters not yet on the topic, from the offset
    after `after` (None: the first), oldest first, at most `limit`: a range
    scan of `ix_persister_dead_letters__unpublished`."""
    c = dead_letters.c
    query = select(dead_letters).where(
        c.group_id == group_id, c.topic == tp[0], c.partition == tp[1], c.published.is_(None)
    )
    if after is not None:
        query = query.where(c.offset > after)
    return query.order_by(c.offset).limit(limit)


async def unpublished_pages(
    engine: AsyncEngine, group_id: str, tp: TP, limit: int = PAGE_ROWS
) -> AsyncIterator[list[Row[Any]]]:
    """The partition's unpublished dead letters, a page of at most `limit`
    at a time, each read when the caller asks for it (one short read, no
    transaction held between pages). Rows marked published meanwhile are
    not read again; keyed by offset, no row is skipped or read twice."""
    after: int | None = None
    while True:
        async with engine.connect() as conn:
            query = unpublished_query(group_id, tp, after, limit)
            page = list((await conn.execute(query)).all())
        if page:
            yield page
        if len(page) < limit:
            return
        after = page[-1].offset
