"""The event envelope (Prefect's), validated straight from the message bytes.

Two readers apply the same rules. `read_envelope` is the worker's: msgspec
decodes the bytes (in a third of pydantic's time; half, with the rules), keeps
the payload as the producer's JSON text, never parsed into objects, and the
rules below run on the result. Whatever it does not take goes to pydantic's
`Event`, which reads a few more forms (numeric timestamps, for one) and says
exactly which field breaks which rule.

Limits that are settings (related count, label count, resource id bytes, the
naive-timestamp rule) come in as ``limits`` (the validation context, for
`Event`), so one definition serves every configuration. Values that land in an
index are bounded in UTF-8 bytes (see `schemas.limits`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple
from uuid import UUID

import msgspec
from asyncpg.pgproto.pgproto import UUID as FastUUID  # type: ignore[import-untyped, unused-ignore]
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from schemas.limits import (
    DEFAULT_MAX_RESOURCE_ID_BYTES,
    MAX_EVENT_NAME_BYTES,
    MAX_EVENT_NAME_CHARS,
    MAX_ROLE_BYTES,
    utf8_length,
)

RESOURCE_ID = "prefect.resource.id"
RESOURCE_ROLE = "prefect.resource.role"

DEFAULT_MAX_RELATED = 100
DEFAULT_MAX_LABELS = 500


def _limit(limits: Any, name: str, default: Any) -> Any:
    return default if limits is None else getattr(limits, name, default)


class Bounds(NamedTuple):
    """The limits the label checks use, read from ``limits`` once."""

    max_related: int
    max_labels: int
    max_id_bytes: int


# The last ``limits`` seen and its bounds: a worker passes the same object
# for every event, so they are read from it once, not per label set.
_last: tuple[Any, Bounds] = (
    object(),
    Bounds(DEFAULT_MAX_RELATED, DEFAULT_MAX_LABELS, DEFAULT_MAX_RESOURCE_ID_BYTES),
)


def bounds(limits: Any) -> Bounds:
    global _last
    last_limits, last_bounds = _last
    if last_limits is limits:
        return last_bounds
    found = Bounds(
        _limit(limits, "max_related", DEFAULT_MAX_RELATED),
        _limit(limits, "max_labels", DEFAULT_MAX_LABELS),
        _limit(limits, "max_resource_id_bytes", DEFAULT_MAX_RESOURCE_ID_BYTES),
    )
    _last = (limits, found)
    return found


def _check_labels(
    labels: dict[str, str], max_labels: int, max_id_bytes: int, what: str | int
) -> None:
    """`what`: "resource", or the index of a related resource. The common case
    costs three comparisons: this runs for every label set."""
    resource_id = labels.get(RESOURCE_ID)
    # Up to a quarter of the bytes limit in characters always fits (at most
    # 4 bytes each); only a longer id is measured.
    if len(labels) > max_labels or not resource_id or len(resource_id) * 4 > max_id_bytes:
        name = what if isinstance(what, str) else f"related[{what}]"
        if len(labels) > max_labels:
            raise ValueError(f"{name} has {len(labels)} labels, more than {max_labels}")
        if not resource_id:
            raise ValueError(f"{name} needs a non-empty {RESOURCE_ID!r} label")
        _check_bytes(f"{name} {RESOURCE_ID!r}", resource_id, max_id_bytes)


def _check_bytes(name: str, text: str, max_bytes: int) -> None:
    size = utf8_length(text)
    if size > max_bytes:
        raise ValueError(f"{name} is {size} bytes in UTF-8, more than {max_bytes}")


def in_utc(value: datetime, limits: Any) -> datetime:
    """A plain datetime in datetime.UTC: drivers write it fastest and it
    compares equal everywhere (pydantic hands back its own tzinfo class)."""
    offset = value.utcoffset()
    if offset is None:
        if _limit(limits, "naive_timestamps", "utc") == "reject":
            raise ValueError("timestamp has no time zone")
        return value.replace(tzinfo=UTC)
    if not offset:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+01:00 is a valid text but no datetime in UTC.
        raise ValueError("timestamp is outside the years 1 to 9999 in UTC") from None


def check_event_name(value: str) -> str:
    if len(value) * 4 > MAX_EVENT_NAME_BYTES:
        _check_bytes("event name", value, MAX_EVENT_NAME_BYTES)
    return value


def check_resource(value: dict[str, str], limits: Any) -> dict[str, str]:
    _, max_labels, max_id_bytes = bounds(limits)
    _check_labels(value, max_labels, max_id_bytes, "resource")
    return value


def check_related(value: list[dict[str, str]], limits: Any) -> list[dict[str, str]]:
    if value:
        _check_related(value, bounds(limits))
    return value


def _check_related(value: list[dict[str, str]], limits: Bounds) -> None:
    max_related, max_labels, max_id_bytes = limits
    if len(value) > max_related:
        raise ValueError(f"{len(value)} related resources, more than {max_related}")
    # One pass of comparisons for the common case (see `_check_labels`);
    # a label set that may break a rule is checked in full, for its message.
    for labels in value:
        resource_id, role = labels.get(RESOURCE_ID), labels.get(RESOURCE_ROLE)
        if (
            len(labels) > max_labels
            or not resource_id
            or len(resource_id) * 4 > max_id_bytes
            or not role
            or len(role) * 4 > MAX_ROLE_BYTES
        ):
            _check_related_fully(value, max_labels, max_id_bytes)
            break


def _check_related_fully(value: list[dict[str, str]], max_labels: int, max_id_bytes: int) -> None:
    for i, labels in enumerate(value):
        _check_labels(labels, max_labels, max_id_bytes, i)
        role = labels.get(RESOURCE_ROLE)
        if not role or len(role) * 4 > MAX_ROLE_BYTES:
            if not role:
                raise ValueError(f"related[{i}] needs a non-empty {RESOURCE_ROLE!r} label")
            _check_bytes(f"related[{i}] {RESOURCE_ROLE!r}", role, MAX_ROLE_BYTES)


class Event(BaseModel):
    """One event. Unknown fields are ignored; timestamps end up in UTC.

    Naive timestamps (no zone) are read as UTC by default; with the
    ``naive_timestamps="reject"`` limit they are a validation error.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: UUID
    occurred: datetime
    event: str = Field(min_length=1, max_length=MAX_EVENT_NAME_CHARS)
    resource: dict[str, str]
    related: list[dict[str, str]] = Field(default_factory=list)
    payload: dict[str, Any] = Field(default_factory=dict)
    follows: UUID | None = None
    received: datetime | None = None

    @field_validator("occurred", "received")
    @classmethod
    def _to_utc(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        return None if value is None else in_utc(value, info.context)

    @field_validator("event")
    @classmethod
    def _event_bytes(cls, value: str) -> str:
        return check_event_name(value)

    @field_validator("resource")
    @classmethod
    def _resource(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return check_resource(value, info.context)

    @field_validator("related")
    @classmethod
    def _related(cls, value: list[dict[str, str]], info: ValidationInfo) -> list[dict[str, str]]:
        return check_related(value, info.context)

    @property
    def resource_id(self) -> str:
        return self.resource[RESOURCE_ID]


class _Fields(msgspec.Struct, frozen=True, kw_only=True):
    """What both forms below share."""

    event: str
    resource: dict[str, str]
    related: list[dict[str, str]] = []
    follows: UUID | None = None


class Envelope(_Fields, frozen=True, kw_only=True):
    """An event as `read_envelope` returns it: `Event`'s fields and rules, but
    the payload is the producer's JSON text of an object, as it came. The
    id is asyncpg's UUID when `read_envelope` read it: equal to the standard
    one, hashed once, and written by asyncpg without a Python call."""

    id: UUID
    occurred: datetime
    received: datetime | None = None
    payload: str = "{}"

    @property
    def resource_id(self) -> str:
        return self.resource[RESOURCE_ID]


class _Wire(_Fields, frozen=True, kw_only=True):
    """The fields as msgspec reads them: the payload left as raw JSON, the
    id and timestamps as text (see `_id` and `_timestamp`)."""

    id: str
    occurred: str
    received: str | None = None
    payload: msgspec.Raw = msgspec.Raw(b"{}")


class _Payload(msgspec.Struct):
    payload: msgspec.Raw = msgspec.Raw(b"{}")


_WIRE = msgspec.json.Decoder(_Wire)
_PAYLOAD = msgspec.json.Decoder(_Payload)


class PayloadNotJson(ValueError):
    """pydantic reads NaN and Infinity as numbers; they are not JSON, and no
    JSON column holds them."""


def read_envelope(raw: bytes, limits: Any = None) -> Envelope:
    """The envelope in `raw`; raises pydantic's ValidationError, naming the
    field and the rule, when it breaks one (see the module docstring), and
    PayloadNotJson."""
    try:
        return _checked(_WIRE.decode(raw), limits)
    except (msgspec.DecodeError, ValueError, RecursionError):
        # UnicodeDecodeError (a payload that is not UTF-8) is a ValueError;
        # JSON nested thousands deep exhausts msgspec's recursion, and
        # pydantic rejects it.
        pass
    event = Event.model_validate_json(raw, context=limits)
    try:
        payload = str(_PAYLOAD.decode(raw).payload, "utf-8")
    except msgspec.DecodeError as exc:
        raise PayloadNotJson("NaN or Infinity is not JSON") from exc
    return Envelope(
        id=event.id,
        occurred=event.occurred,
        event=event.event,
        resource=event.resource,
        related=event.related,
        follows=event.follows,
        received=event.received,
        payload=payload,
    )


def _checked(wire: _Wire, limits: Any) -> Envelope:
    """`Event`'s rules on what msgspec read; each check is called only where
    its cheap test could fail (this runs for every event)."""
    payload = str(wire.payload, "utf-8")
    name, resource, related = wire.event, wire.resource, wire.related
    if not payload.startswith("{") or not 0 < len(name) <= MAX_EVENT_NAME_CHARS:
        raise ValueError("not an object, or a name out of bounds: Event says which")
    if len(name) * 4 > MAX_EVENT_NAME_BYTES:
        check_event_name(name)
    found = bounds(limits)
    _check_labels(resource, found.max_labels, found.max_id_bytes, "resource")
    if related:
        _check_related(related, found)
    received = None if wire.received is None else _timestamp(wire.received, limits)
    return Envelope(
        id=_id(wire.id),
        occurred=_timestamp(wire.occurred, limits),
        event=name,
        resource=resource,
        related=related,
        follows=wire.follows,
        received=received,
        payload=payload,
    )


def _id(text: str) -> UUID:
    """A UUID in the forms msgspec reads, hyphenated or 32 hex digits; any
    other form goes to `Event`. asyncpg's parser skips a hyphen anywhere, so
    the hyphens' places are checked here."""
    size = len(text)
    if size == 32 or (size == 36 and text[8] == text[13] == text[18] == text[23] == "-"):
        uuid: UUID = FastUUID(text)  # ValueError unless the rest is 32 hex digits
        return uuid
    raise ValueError("not a UUID msgspec reads: Event says which")


def _timestamp(text: str, limits: Any) -> datetime:
    """RFC 3339 text read by msgspec. More than six digits of a second's
    fraction go to `Event`: msgspec rounds them, pydantic (and so Prefect's
    own reader, and every earlier version of this one) cuts them, and an
    event's key includes `occurred`."""
    dot = text.find(".")
    if dot != -1 and len(text) > dot + 7 and text[dot + 7].isdigit():
        raise ValueError("sub-microsecond digits: Event reads them")
    if "\x00" in text:
        # msgspec stops reading at a NUL and would drop the offset after it.
        raise ValueError("a NUL: Event rejects it")
    value = msgspec.convert(text, datetime)
    return value if value.tzinfo is UTC else in_utc(value, limits)
