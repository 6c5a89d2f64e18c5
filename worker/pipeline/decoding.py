"""Kafka records -> table rows, or a rejection saying why not. Pure, no I/O.

Every record ends as exactly one of: an event row (with its resource rows), a
duplicate of an event earlier in the same batch, or a `Rejection` bound for the
dead-letter destination. A duplicate is one with the same key as the table's,
(id, occurred): an event with the id of an earlier one but another
`occurred` is a row of its own, as it would be in a later batch
(docs/storage.md, "Idempotency").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any
from uuid import UUID

import orjson
from pydantic import ValidationError

from schemas.events import (
    RESOURCE_ID,
    RESOURCE_ROLE,
    Envelope,
    Event,
    PayloadNotJson,
    read_envelope,
)
from worker.core.settings import Limits
from worker.pipeline.batching import Record

MAX_ERROR_CHARS = 2000
# Columns of `events` and `event_resources` whose row values are JSON text,
# serialised once here: writers pass them to the database as they are.
JSON_COLUMNS = frozenset({"resource", "related_resource_ids", "related", "payload"})


@dataclass(frozen=True)
class Rejection:
    record: Record
    error_class: str
    error: str


# An event's key in `events`: (id, occurred).
EventKey = tuple[UUID, datetime]
# A row as COPY takes it: its values in the order of EVENT_FIELDS or
# RESOURCE_FIELDS.
Row = tuple[Any, ...]

# The columns of an `events` row as `to_rows` builds it: all the worker
# fills but `recorded`, which the write adds (last) for the whole batch.
EVENT_FIELDS = (
    "id",
    "occurred",
    "event",
    "resource_id",
    "resource",
    "related_resource_ids",
    "related",
    "payload",
    "received",
    "follows",
)
RESOURCE_FIELDS = ("event_id", "resource_role", "resource_id", "occurred", "resource")


def event_key(row: Row) -> EventKey:
    """The key of an `events` row (see `Rows`): its first two values."""
    return row[0], row[1]


@dataclass
class Rows:
    """A batch's rows. `resource_rows` holds every event's resource rows in
    the order of `events`, as COPY takes them, and `records` the record of
    each event, in step with `events`. `resources` and `sources` key them by
    `event_key`, built when first asked for: only a batch the database
    refuses, written again in parts, needs them."""

    events: list[Row] = field(default_factory=list)
    resource_rows: list[Row] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @cached_property
    def resources(self) -> dict[EventKey, list[Row]]:
        by_key: dict[EventKey, list[Row]] = {}
        for row in self.resource_rows:
            # RESOURCE_FIELDS: event_id, resource_role, resource_id, occurred.
            by_key.setdefault((row[0], row[3]), []).append(row)
        return by_key

    @cached_property
    def sources(self) -> dict[EventKey, Record]:
        """The record each event came from, for a dead letter if the database
        rejects the event."""
        return {
            event_key(row): record for row, record in zip(self.events, self.records, strict=True)
        }

    def resources_of(self, event_rows: list[Row]) -> list[Row]:
        """The resource rows of `event_rows` (all of `events`, or a part)."""
        if event_rows is self.events:
            return self.resource_rows
        return [r for row in event_rows for r in self.resources[event_key(row)]]


def decode(record: Record, limits: Limits, max_message_bytes: int) -> Envelope | Rejection:
    value = record.value
    if value is None:
        return Rejection(record, "Tombstone", "message has no value (a tombstone)")
    if len(value) > max_message_bytes:
        return Rejection(
            record,
            "MessageTooLarge",
            f"message is {len(value)} bytes, more than max_message_bytes={max_message_bytes}",
        )
    try:
        return read_envelope(value, limits)
    except PayloadNotJson as exc:
        # In the payload or in a field the envelope ignores.
        return Rejection(record, "InvalidJson", f"<message>: {exc}")
    except ValidationError as exc:
        invalid_json = any(e["type"] == "json_invalid" for e in exc.errors())
        kind = "InvalidJson" if invalid_json else "InvalidEnvelope"
        message = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<message>'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        return Rejection(record, kind, message[:MAX_ERROR_CHARS])


def received_at(record: Record) -> datetime:
    """The message timestamp, or now when the producer set none."""
    if record.timestamp is not None and record.timestamp >= 0:
        return datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)
    return datetime.now(UTC)


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def event_values(event: Envelope | Event, received: datetime) -> Row:
    """The `events` row (EVENT_FIELDS): Prefect's `as_database_row()` but
    `recorded`; JSON columns as JSON text. An `Envelope`'s payload is JSON
    text already."""
    dumps = orjson.dumps  # inlined `json_text`: this runs for every event
    related = event.related
    if related:
        related_ids = dumps([labels[RESOURCE_ID] for labels in related]).decode()
        related_text = dumps(related).decode()
    else:
        related_ids = related_text = "[]"
    payload = event.payload
    return (
        event.id,
        event.occurred,
        event.event,
        event.resource[RESOURCE_ID],
        dumps(event.resource).decode(),
        related_ids,
        related_text,
        payload if isinstance(payload, str) else dumps(payload).decode(),
        event.received or received,
        event.follows,
    )


def other_labels(labels: dict[str, str]) -> str:
    """A resource row's `resource`: the labels that are not its id or role
    (those are columns), as Prefect stores it, in JSON text."""
    return json_text({k: v for k, v in labels.items() if k != RESOURCE_ID and k != RESOURCE_ROLE})


def resource_values(event: Envelope | Event) -> list[Row]:
    """The `event_resources` rows (RESOURCE_FIELDS): the primary resource
    (role "") and each distinct (role, id) related one. Prefect's
    `as_database_resource_rows()`, but a (role, id) repeated in `related`
    gives one row (the first), as the table's key allows."""
    event_id, occurred, resource = event.id, event.occurred, event.resource
    primary = resource[RESOURCE_ID]
    # Most label sets are only an id (and a role): "{}", with no copy and no
    # encoding. Every related one has both (the envelope's rules).
    plain = len(resource) == 1 or (len(resource) == 2 and RESOURCE_ROLE in resource)
    rows = [(event_id, "", primary, occurred, "{}" if plain else other_labels(resource))]
    if event.related:
        seen = {("", primary)}
        for labels in event.related:
            key = (labels[RESOURCE_ROLE], labels[RESOURCE_ID])
            if key not in seen:
                seen.add(key)
                text = "{}" if len(labels) == 2 else other_labels(labels)
                rows.append((event_id, *key, occurred, text))
    return rows


def event_row(event: Envelope | Event, received: datetime) -> dict[str, Any]:
    """`event_values` by column name."""
    return dict(zip(EVENT_FIELDS, event_values(event, received), strict=True))


def resource_rows(event: Envelope | Event) -> list[dict[str, Any]]:
    """`resource_values` by column name."""
    return [dict(zip(RESOURCE_FIELDS, row, strict=True)) for row in resource_values(event)]


def to_rows(records: Iterable[Record], limits: Limits, max_message_bytes: int) -> Rows:
    rows = Rows()
    events, resource_rows, sources = rows.events, rows.resource_rows, rows.records
    keys: set[EventKey] = set()
    # A producer's batch shares one timestamp: converted once.
    last_timestamp, last_received = None, datetime.now(UTC)
    for record in records:
        decoded = decode(record, limits, max_message_bytes)
        if isinstance(decoded, Rejection):
            rows.rejections.append(decoded)
            continue
        # Added, unless an earlier event of the batch has its key: one hash.
        seen = len(keys)
        keys.add((decoded.id, decoded.occurred))
        if len(keys) == seen:
            continue
        received = decoded.received
        if received is None:
            if record.timestamp != last_timestamp:
                last_timestamp, last_received = record.timestamp, received_at(record)
            received = last_received
        events.append(event_values(decoded, received))
        resource_rows += resource_values(decoded)
        sources.append(record)
    return rows
