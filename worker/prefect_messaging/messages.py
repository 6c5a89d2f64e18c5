"""Prefect's messages as Kafka records and back. No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

# The attribute Prefect gives every event: its id, the record's key, so one
# event's copies land on one partition.
KEY_ATTRIBUTE = "id"
# What Prefect's consumers of `events` read from the attributes rather than
# the event (its triggers skip a message without them).
EVENT_ATTRIBUTES = ("id", "event")

Header = tuple[str, bytes]


@dataclass
class KafkaMessage:
    """Prefect's `Message`: the bytes published and their attributes."""

    data: bytes
    attributes: dict[str, str]
    # Where it was read from, and its key; unset for a message being published.
    partition: int = field(default=-1, compare=False)
    offset: int = field(default=-1, compare=False)
    key: bytes | None = field(default=None, compare=False)


def record_fields(message: KafkaMessage) -> tuple[bytes | None, bytes, list[Header]]:
    """(key, value, headers) of the record that carries `message`."""
    key = message.attributes.get(KEY_ATTRIBUTE)
    headers = [(name, str(value).encode()) for name, value in message.attributes.items()]
    return (key.encode() if key is not None else None), message.data, headers


def from_record(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    position: tuple[int, int],
    is_event: bool,
) -> KafkaMessage:
    """The message a record at (partition, offset) carries. Undecodable header
    bytes are replaced, not refused: Prefect reads attributes only as text.
    An event written by a producer that is not Prefect has no headers; its
    `id` and `event` attributes are then taken from the event itself."""
    attributes = {name: raw.decode(errors="replace") for name, raw in headers}
    data = value or b""
    if is_event and any(name not in attributes for name in EVENT_ATTRIBUTES):
        attributes = _event_attributes(data) | attributes
    return KafkaMessage(data, attributes, *position, key=key)


def _event_attributes(data: bytes) -> dict[str, str]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(event, dict):
        return {}
    return {name: event[name] for name in EVENT_ATTRIBUTES if isinstance(event.get(name), str)}
