"""The event envelope (Prefect's), validated straight from the message bytes.

Limits that are settings (related count, label count, the naive-timestamp rule)
come in through the validation context, so one model serves every
configuration: ``Event.model_validate_json(raw, context=limits)``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

RESOURCE_ID = "prefect.resource.id"
RESOURCE_ROLE = "prefect.resource.role"

DEFAULT_MAX_RELATED = 100
DEFAULT_MAX_LABELS = 500


def _limit(info: ValidationInfo, name: str, default: Any) -> Any:
    if info.context is None:
        return default
    return getattr(info.context, name, default)


def _check_labels(labels: dict[str, str], max_labels: int, what: str | int) -> None:
    """`what`: "resource", or the index of a related resource (its name is
    only built for an error message: this runs for every label set)."""
    if len(labels) > max_labels or not labels.get(RESOURCE_ID):
        name = what if isinstance(what, str) else f"related[{what}]"
        if len(labels) > max_labels:
            raise ValueError(f"{name} has {len(labels)} labels, more than {max_labels}")
        raise ValueError(f"{name} needs a non-empty {RESOURCE_ID!r} label")


class Event(BaseModel):
    """One event. Unknown fields are ignored; timestamps end up in UTC.

    Naive timestamps (no zone) are read as UTC by default; with the
    ``naive_timestamps="reject"`` limit they are a validation error.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: UUID
    occurred: datetime
    event: str = Field(min_length=1, max_length=1024)
    resource: dict[str, str]
    related: list[dict[str, str]] = Field(default_factory=list)
    payload: dict[str, Any] = Field(default_factory=dict)
    follows: UUID | None = None
    received: datetime | None = None

    @field_validator("occurred", "received")
    @classmethod
    def _to_utc(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None:
            return None
        # A plain datetime in datetime.UTC: drivers write it fastest and it
        # compares equal everywhere (pydantic hands back its own tzinfo class).
        offset = value.utcoffset()
        if offset is None:
            if _limit(info, "naive_timestamps", "utc") == "reject":
                raise ValueError("timestamp has no time zone")
            return value.replace(tzinfo=UTC)
        return value.replace(tzinfo=UTC) if not offset else value.astimezone(UTC)

    @field_validator("resource")
    @classmethod
    def _resource(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        _check_labels(value, _limit(info, "max_labels", DEFAULT_MAX_LABELS), "resource")
        return value

    @field_validator("related")
    @classmethod
    def _related(cls, value: list[dict[str, str]], info: ValidationInfo) -> list[dict[str, str]]:
        max_related = _limit(info, "max_related", DEFAULT_MAX_RELATED)
        if len(value) > max_related:
            raise ValueError(f"{len(value)} related resources, more than {max_related}")
        max_labels = _limit(info, "max_labels", DEFAULT_MAX_LABELS)
        for i, labels in enumerate(value):
            _check_labels(labels, max_labels, i)
            if not labels.get(RESOURCE_ROLE):
                raise ValueError(f"related[{i}] needs a non-empty {RESOURCE_ROLE!r} label")
        return value

    @property
    def resource_id(self) -> str:
        return self.resource[RESOURCE_ID]
