"""Every index entry of the tables fits PostgreSQL's btree limit with the
largest values the envelope and the settings allow.

The entry sizes follow PostgreSQL's layout of an index tuple; the model is
first checked against the limits measured on PostgreSQL 15 (8 KiB pages) with
incompressible text, then applied to every index of `schemas.tables`. An
index added later on a column nothing bounds fails here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
from sqlalchemy import BigInteger, DateTime, Integer, String, Table, Text, Uuid

from schemas.limits import (
    BTREE_ENTRY_BYTES,
    MAX_EVENT_NAME_BYTES,
    MAX_GROUP_ID_BYTES,
    MAX_RESOURCE_ID_BYTES_CAP,
    MAX_ROLE_BYTES,
    MAX_TOPIC_CHARS,
    SEEN_MESSAGE_KEY_CHARS,
    utf8_length,
)
from schemas.tables import metadata
from worker.services.retention_trimmer import RetentionTrimmer

HEADER_BYTES = 8
# (width, alignment) of the fixed-width types used in keys.
FIXED = {"uuid": (16, 1), "timestamptz": (8, 8), "int4": (4, 4), "int8": (8, 8)}
# A text of at most this many bytes gets a 1-byte header and no alignment.
SHORT_TEXT_BYTES = 126


def align(size: int, to: int) -> int:
    return -(-size // to) * to


Layout = list[tuple[str, int]]


def entry_bytes(columns: Layout) -> int:
    """Size of a btree entry of (kind, text bytes) columns."""
    size = HEADER_BYTES
    for kind, length in columns:
        if kind != "text":
            width, alignment = FIXED[kind]
            size = align(size, alignment) + width
        elif length <= SHORT_TEXT_BYTES:
            size += 1 + length
        else:
            size = align(size, 4) + 4 + length
    return align(size, 8)


def text_and_timestamp(n: int) -> Layout:
    return [("text", n), ("timestamptz", 0)]


def resource_key(role: int, resource_id: int) -> Layout:
    return [("uuid", 0), ("text", role), ("text", resource_id)]


# Largest text that PostgreSQL 15 stored (one byte more: 54000), measured
# with random characters: the model must put it within the limit, and one
# byte more beyond it.
MEASURED: list[tuple[str, Callable[[int], Layout], int]] = [
    ("text, timestamp", text_and_timestamp, 2684),  # (resource_id, occurred), (event, occurred)
    ("uuid, role '', id", partial(resource_key, 0), 2672),  # the primary resource
    ("uuid, role of 1, id", partial(resource_key, 1), 2672),
    ("uuid, role of 126, id", partial(resource_key, 126), 2548),
    ("uuid, role of 127, id", partial(resource_key, 127), 2544),
    ("uuid, role of 300, id", partial(resource_key, 300), 2372),
    ("uuid, role of 1000, id", partial(resource_key, 1000), 1672),
]


@pytest.mark.parametrize(
    ("layout", "largest"), [m[1:] for m in MEASURED], ids=[m[0] for m in MEASURED]
)
def test_the_entry_model_matches_what_postgresql_stored(
    layout: Callable[[int], Layout], largest: int
) -> None:
    assert entry_bytes(layout(largest)) <= BTREE_ENTRY_BYTES
    assert entry_bytes(layout(largest + 1)) > BTREE_ENTRY_BYTES


# The most bytes each indexed text column can receive.
TEXT_BOUNDS = {
    ("events", "event"): MAX_EVENT_NAME_BYTES,
    ("events", "resource_id"): MAX_RESOURCE_ID_BYTES_CAP,
    ("event_resources", "resource_role"): MAX_ROLE_BYTES,
    ("event_resources", "resource_id"): MAX_RESOURCE_ID_BYTES_CAP,
    ("persister_consumer_offsets", "group_id"): MAX_GROUP_ID_BYTES,
    ("persister_consumer_offsets", "topic"): MAX_TOPIC_CHARS,
    ("persister_dead_letters", "group_id"): MAX_GROUP_ID_BYTES,
    ("persister_dead_letters", "topic"): MAX_TOPIC_CHARS,
    ("persister_leader_leases", "name"): utf8_length(RetentionTrimmer.lease_name),
    ("persister_partition_controls", "group_id"): MAX_GROUP_ID_BYTES,
    ("persister_partition_controls", "topic"): MAX_TOPIC_CHARS,
    ("persister_seen_messages", "key"): SEEN_MESSAGE_KEY_CHARS,
}


def kind(table: Table, name: str) -> tuple[str, int]:
    column_type = table.c[name].type
    if isinstance(column_type, String | Text):
        bound = TEXT_BOUNDS.get((table.name, name))
        assert bound is not None, f"{table.name}.{name} is indexed text that nothing bounds"
        return "text", bound
    for python_type, key in (
        (Uuid, "uuid"),
        (DateTime, "timestamptz"),
        (BigInteger, "int8"),
        (Integer, "int4"),
    ):
        if isinstance(column_type, python_type):
            return key, 0
    raise AssertionError(f"{table.name}.{name}: no entry size known for {column_type!r}")


def keys() -> list[tuple[str, Table, list[str]]]:
    """(name, table, columns) of every primary key and index of the tables."""
    found = []
    for table in metadata.tables.values():
        primary = [c.name for c in table.primary_key.columns]
        found.append((f"{table.name} primary key", table, primary))
        for index in table.indexes:
            columns = [c.name for c in index.columns]
            assert len(columns) == len(index.expressions), f"{index.name} indexes an expression"
            found.append((str(index.name), table, columns))
    return found


KEYS = keys()


def test_every_key_of_the_tables_is_checked() -> None:
    assert {name for name, _, _ in KEYS} >= {
        "ix_events__event_occurred",
        "ix_events__resource_id_occurred",
        "event_resources primary key",
        "ix_event_resources__resource_id_occurred",
    }


@pytest.mark.parametrize(("table", "columns"), [k[1:] for k in KEYS], ids=[k[0] for k in KEYS])
def test_the_largest_allowed_values_fit_every_key(table: Table, columns: list[str]) -> None:
    assert entry_bytes([kind(table, column) for column in columns]) <= BTREE_ENTRY_BYTES
