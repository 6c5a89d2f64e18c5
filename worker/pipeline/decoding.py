"""Kafka records -> table rows, or a rejection saying why not. Pure, no I/O.

Every record ends as exactly one of: an event row (with its resource rows), a
duplicate of an event earlier in the same batch, or a `Rejection` bound for the
dead-letter destination. A duplicate is one with the same key as the table's,
(id, occurred): an event with the id of an earlier one but another
`occurred` is a row of its own, as it would be in a later batch (README,
"Tables").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


def event_key(row: Mapping[str, Any]) -> EventKey:
    """The key of an `events` row (see `Rows`)."""
    return row["id"], row["occurred"]


@dataclass
class Rows:
    """A batch's rows; `resources` and `sources` are by `event_key`."""

    events: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[EventKey, list[dict[str, Any]]] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    # The record each event came from, for a dead letter if the database
    # rejects the event.
    sources: dict[EventKey, Record] = field(default_factory=dict)


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


def event_row(
    event: Envelope | Event, received: datetime, encode: Callable[[Any], Any] = json_text
) -> dict[str, Any]:
    """The `events` row: Prefect's `as_database_row()` but `recorded`, which the
    insert sets per batch; JSON columns as JSON text (see JSON_COLUMNS), or as
    `encode` gives them (the benchmark's baseline passes pydantic's `Event`
    and leaves them to SQLAlchemy). An `Envelope`'s payload is JSON text already."""
    payload = event.payload
    return {
        "id": event.id,
        "occurred": event.occurred,
        "event": event.event,
        "resource_id": event.resource_id,
        "resource": encode(event.resource),
        "related_resource_ids": encode([r[RESOURCE_ID] for r in event.related]),
        "related": encode(event.related),
        "payload": payload if isinstance(payload, str) else encode(payload),
        "received": event.received or received,
        "follows": event.follows,
    }


def other_labels(labels: dict[str, str]) -> dict[str, str]:
    """A resource row's `resource`: the labels that are not its id or role
    (those are columns), as Prefect stores it."""
    return {k: v for k, v in labels.items() if k != RESOURCE_ID and k != RESOURCE_ROLE}


def resource_rows(
    event: Envelope | Event, encode: Callable[[Any], Any] = json_text
) -> list[dict[str, Any]]:
    """The primary resource (role "") and each distinct (role, id) related one:
    Prefect's `as_database_resource_rows()`, but a (role, id) repeated in
    `related` gives one row (the first), as the table's key allows. `encode`
    as for `event_row`."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for role, labels in [("", event.resource), *((r[RESOURCE_ROLE], r) for r in event.related)]:
        key = (role, labels[RESOURCE_ID])
        if key not in rows:
            rows[key] = {
                "event_id": event.id,
                "resource_role": role,
                "resource_id": labels[RESOURCE_ID],
                "occurred": event.occurred,
                "resource": encode(other_labels(labels)),
            }
    return list(rows.values())


def to_rows(records: Iterable[Record], limits: Limits, max_message_bytes: int) -> Rows:
    rows = Rows()
    for record in records:
        decoded = decode(record, limits, max_message_bytes)
        if isinstance(decoded, Rejection):
            rows.rejections.append(decoded)
        elif (key := (decoded.id, decoded.occurred)) not in rows.resources:
            rows.events.append(event_row(decoded, received_at(record)))
            rows.resources[key] = resource_rows(decoded)
            rows.sources[key] = record
    return rows
