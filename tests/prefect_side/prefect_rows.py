"""Prefect's side of the row-equality test, run with the Prefect venv's python.

    prefect_rows.py OUT   records on stdin (JSON list of {"value": base64, "timestamp": ms})
                          -> per record, Prefect's rows or why Prefect refused it, into OUT

The records are read once Prefect is imported: the caller makes them while
Prefect starts.

Each record is read as Prefect's server reads an event. Its event persister
takes the `ReceivedEvent` JSON its messaging carries
(`ReceivedEvent.model_validate_json`); an event that does not say when it was
received is one its API takes in (`Event.model_validate_json`, then
`receive()`), received here at the record's timestamp, the moment the worker
stamps on it. The rows are `as_database_row()` and
`as_database_resource_rows()`, written out as they are: timestamps as ISO text
with the offset Prefect kept (converting to UTC can overflow at the years 1 and
9999), UUIDs as strings, the JSON columns as JSON. Imports nothing from the
worker: only the standard library and Prefect.
"""

from __future__ import annotations

import base64
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import prefect
from prefect.server.events.schemas.events import ReceivedEvent


def plain(value: Any) -> Any:
    """Timestamps and UUIDs, the only values of the rows JSON has no form for."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} in a row")


def received(raw: bytes, timestamp_ms: int) -> ReceivedEvent:
    event = ReceivedEvent.model_validate_json(raw)
    if "received" in event.model_fields_set:
        return event
    # What `Event.model_validate_json(raw).receive(at)` gives, from the
    # fields already read: `receive` dumps them and validates them again.
    return event.receive(received=datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC))


def rows(record: dict[str, Any]) -> dict[str, Any]:
    try:
        event = received(base64.b64decode(record["value"]), record["timestamp"])
    except ValueError as exc:  # pydantic's ValidationError is one
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"row": event.as_database_row(), "resource_rows": event.as_database_resource_rows()}


def main() -> None:
    [target] = sys.argv[1:]
    records = json.load(sys.stdin)
    result = {"prefect": prefect.__version__, "results": [rows(r) for r in records]}
    Path(target).write_text(json.dumps(result, default=plain))


if __name__ == "__main__":
    main()
