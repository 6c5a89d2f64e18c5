"""A batch's rows by column name, for tests that look at one column."""

from __future__ import annotations

from typing import Any

from worker.pipeline.decoding import EVENT_FIELDS, RESOURCE_FIELDS, EventKey, Rows


def events_of(rows: Rows) -> list[dict[str, Any]]:
    return [dict(zip(EVENT_FIELDS, row, strict=True)) for row in rows.events]


def resources_of(rows: Rows) -> dict[EventKey, list[dict[str, Any]]]:
    return {
        key: [dict(zip(RESOURCE_FIELDS, row, strict=True)) for row in found]
        for key, found in rows.resources.items()
    }
