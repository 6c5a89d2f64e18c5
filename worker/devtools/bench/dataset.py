"""The benchmark's events, generated once, and the rows COPY writes for them. Pure.

Every measurement uses these same events: the topic is loaded with their
encoded form, and the COPY phases write the rows the worker would make of
them (columns as in `schemas.tables`, JSON columns as JSON text).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

from schemas.events import Event
from worker.devtools.loadgen import encode, make_event
from worker.pipeline.decoding import event_row, resource_rows
from worker.pipeline.inserts import EVENT_COLUMNS, RESOURCE_COLUMNS

SEED = 20_260_101
# make_event's envelope is ~415 bytes without the payload note: this makes the
# encoded events ~1 KB on average.
PAYLOAD_BYTES = 609

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Dataset:
    events: list[dict[str, Any]]
    values: list[bytes]

    @property
    def size(self) -> int:
        return len(self.events)

    @property
    def nbytes(self) -> int:
        return sum(map(len, self.values))

    @property
    def resource_rows(self) -> int:
        """The primary resource plus each related one (their (role, id) are distinct)."""
        return sum(1 + len(event["related"]) for event in self.events)


def packed(event: dict[str, Any]) -> bytes:
    """The encoded event in a buffer of its own size: orjson's result keeps
    the memory it grew into (about 8 KiB for these 1 KiB events), which
    for millions of kept values does not fit in memory."""
    return bytes(memoryview(encode(event)))


def make_values(count: int, seed: int = SEED) -> list[bytes]:
    """`make_dataset(count, seed).values` without holding the events."""
    rng = random.Random(seed)
    return [packed(make_event(rng, payload_bytes=PAYLOAD_BYTES)) for _ in range(count)]


def make_dataset(count: int, seed: int = SEED) -> Dataset:
    rng = random.Random(seed)
    events = [make_event(rng, payload_bytes=PAYLOAD_BYTES) for _ in range(count)]
    return Dataset(events, [packed(event) for event in events])


@dataclass(frozen=True)
class CopyChunk:
    """The rows of one COPY transaction: some events and all their resource rows."""

    events: list[Row]
    resources: list[Row]

    def __len__(self) -> int:
        return len(self.events)


def records(event: dict[str, Any], received: datetime) -> tuple[Row, list[Row]]:
    """The worker's rows for `event` (`worker.pipeline.decoding`), as COPY
    takes them: values in the tables' column order."""
    valid = Event.model_validate(event)
    row = event_row(valid, received) | {"recorded": received}
    resources = resource_rows(valid)
    return tuple(row[n] for n in EVENT_COLUMNS), [
        tuple(r[n] for n in RESOURCE_COLUMNS) for r in resources
    ]


def copy_chunks(
    events: Sequence[dict[str, Any]], received: datetime, chunk_events: int
) -> list[CopyChunk]:
    """The rows of `events`, in transactions of `chunk_events` events."""
    chunks = []
    for start in range(0, len(events), chunk_events):
        chunk = CopyChunk([], [])
        for event in events[start : start + chunk_events]:
            row, resources = records(event, received)
            chunk.events.append(row)
            chunk.resources.extend(resources)
        chunks.append(chunk)
    return chunks


def with_fresh_ids(chunks: Sequence[CopyChunk], shift: timedelta = timedelta(0)) -> list[CopyChunk]:
    """The same rows under new random event ids (for writing them again into
    tables that already hold them), `occurred` moved by `shift`."""
    id_at, occurred_at = EVENT_COLUMNS.index("id"), EVENT_COLUMNS.index("occurred")
    event_id_at = RESOURCE_COLUMNS.index("event_id")
    resource_occurred_at = RESOURCE_COLUMNS.index("occurred")
    fresh = []
    for chunk in chunks:
        ids = {row[id_at]: uuid4() for row in chunk.events}
        events = [
            _replace(row, {id_at: ids[row[id_at]], occurred_at: row[occurred_at] + shift})
            for row in chunk.events
        ]
        resources = [
            _replace(
                row,
                {
                    event_id_at: ids[row[event_id_at]],
                    resource_occurred_at: row[resource_occurred_at] + shift,
                },
            )
            for row in chunk.resources
        ]
        fresh.append(CopyChunk(events, resources))
    return fresh


def _replace(row: Row, values: dict[int, Any]) -> Row:
    return tuple(values.get(i, value) for i, value in enumerate(row))
