"""`timestamptz` values on the worker's PostgreSQL connections, each moment
encoded once.

asyncpg encodes every `timestamptz` through several Python-level datetime
operations, about 0.5 µs a value: more than any other column of a COPY. A
batch's rows repeat a few moments many times: an event's `occurred` is in
each of its resource rows, and `received` and `recorded` are most often the
same for the whole batch. So the worker's connections hand asyncpg the
moment in PostgreSQL's own form, microseconds since 2000-01-01 UTC (asyncpg's
"tuple" format), from a memo: about 0.1 µs a value.

The values are asyncpg's own: a naive datetime is local time, `datetime.max`
and `datetime.min` (naive, or aware in UTC) are PostgreSQL's infinities, and
a value read back is an aware UTC datetime, or one of those two (naive).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
PG_INFINITY = 2**63 - 1
PG_NEGATIVE_INFINITY = -(2**63)
MAX_US = (datetime.max.replace(tzinfo=UTC) - PG_EPOCH) // ONE_US
MIN_US = (datetime.min.replace(tzinfo=UTC) - PG_EPOCH) // ONE_US
# A batch holds a few thousand distinct moments: the memo is cleared when it
# outgrows a few batches, never kept for the process's life.
MEMO_SIZE = 65_536


class Memo(dict[Any, tuple[int]]):
    """Moments already encoded, at most `size`. asyncpg calls the encoder for
    every value: the encoder is this dict's own lookup, so a moment met before
    costs no Python call at all; a new one is encoded by `__missing__`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __missing__(self, moment: datetime | date) -> tuple[int]:
        if len(self) >= self.size:
            self.clear()
        encoded = self[moment] = (microseconds(moment),)
        return encoded


_memo = Memo(MEMO_SIZE)
encode = _memo.__getitem__


def microseconds(moment: datetime | date) -> int:
    """`moment` as PostgreSQL stores a `timestamptz`."""
    if not isinstance(moment, datetime):
        # A date is its local midnight, as asyncpg reads it.
        moment = datetime(moment.year, moment.month, moment.day)
    if moment.tzinfo is None:
        if moment == datetime.max:
            return PG_INFINITY
        if moment == datetime.min:
            return PG_NEGATIVE_INFINITY
        moment = moment.astimezone(UTC)
    us = (moment - PG_EPOCH) // ONE_US
    # asyncpg's rule: the first and last representable moments in UTC are
    # the infinities too.
    if us == MAX_US:
        return PG_INFINITY
    return PG_NEGATIVE_INFINITY if us == MIN_US else us


def decode(value: tuple[int]) -> datetime:
    (us,) = value
    if us == PG_INFINITY:
        return datetime.max
    if us == PG_NEGATIVE_INFINITY:
        return datetime.min
    return PG_EPOCH + timedelta(microseconds=us)


async def install(connection: Any) -> None:
    """Use this codec on an asyncpg connection."""
    await connection.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=encode, decoder=decode, format="tuple"
    )
