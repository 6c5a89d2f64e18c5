"""Rows as the schema before migration 0004 stored them, and what 0004 makes
of them: the same data, resource rows without the id and role labels."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from schemas.events import RESOURCE_ID, RESOURCE_ROLE

BEFORE = "0003"
E1 = UUID("00000000-0000-4000-8000-000000000001")
E2 = UUID("00000000-0000-4000-8000-000000000002")
OCCURRED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

RUN = {RESOURCE_ID: "prefect.flow-run.1", "prefect.resource.name": "run"}
FLOW = {RESOURCE_ID: "prefect.flow.9", RESOURCE_ROLE: "flow", "prefect.resource.name": "f"}
BARE = {RESOURCE_ID: "r2"}


def _event(id: UUID, resource: dict[str, str], related: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "id": id,
        "occurred": OCCURRED,
        "event": "e",
        "resource_id": resource[RESOURCE_ID],
        "resource": resource,
        "related_resource_ids": [r[RESOURCE_ID] for r in related],
        "related": related,
        "payload": {"n": 1},
        "received": OCCURRED,
        "follows": None,
    }


EVENTS = [_event(E1, RUN, [FLOW]), _event(E2, BARE, [])]


def _resource(event_id: UUID, role: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "resource_role": role,
        "resource_id": labels[RESOURCE_ID],
        "occurred": OCCURRED,
        "resource": labels,
    }


# Ordered by (event_id, resource_role).
RESOURCES = [_resource(E1, "", RUN), _resource(E1, "flow", FLOW), _resource(E2, "", BARE)]
# (event_id, role, resource) after 0004.
MIGRATED_RESOURCES = [
    (E1, "", {"prefect.resource.name": "run"}),
    (E1, "flow", {"prefect.resource.name": "f"}),
    (E2, "", {}),
]


def unchanged(row: dict[str, Any]) -> dict[str, Any]:
    """An event row without its timestamps (SQLite returns them without a
    zone) and the columns 0004 added."""
    dropped = {"occurred", "received", "recorded", "created", "updated"}
    return {k: v for k, v in row.items() if k not in dropped}
