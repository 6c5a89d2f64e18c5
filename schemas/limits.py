"""How much text an index entry holds, and the bounds that keep every indexed
value of an event within it.

PostgreSQL refuses a btree entry larger than a third of a page (SQLSTATE
54000): 2,704 bytes with the standard 8 KiB pages, headers included. A long
value is compressed before that check when it compresses, so the size that
always fits is the one for incompressible text, counted in UTF-8 bytes (a
character is 1 to 4 of them). The entries of `schemas.tables` that hold text:

- ``events (event, occurred)``, ``events (resource_id, occurred)`` and
  ``event_resources (resource_id, occurred)``: an 8-byte entry header, a 4-byte
  text header, the text, padding to 8, an 8-byte timestamp: at most 2,684
  bytes of text.
- ``event_resources`` primary key ``(occurred, event_id, resource_role,
  resource_id)``: the entry header, an 8-byte timestamp, a 16-byte uuid, then
  two texts with 4-byte headers and up to 3 bytes of padding between them:
  role and id together at most 2,661.
- ``consumer_offsets (group_id, topic, partition)`` and the dead-letter origin
  index: a group id (a setting) and a topic name (Kafka allows 249 ASCII
  characters).

`tests/unit/schemas/test_limits.py` checks every index of the tables against these
bounds; the integration tests store values of exactly these sizes, made of
4-byte characters, in PostgreSQL.
"""

from __future__ import annotations

BTREE_ENTRY_BYTES = 2704
MAX_TOPIC_CHARS = 249

# Prefect's own bound on event names, in characters; the bytes bound keeps a
# name of 3- and 4-byte characters indexable.
MAX_EVENT_NAME_CHARS = 1024
MAX_EVENT_NAME_BYTES = 2048
# Roles are short words ("flow-run", "tag"); fixed, so an id can have the rest
# of the primary key's entry.
MAX_ROLE_BYTES = 256
# `prefect.resource.id`, primary and related: a setting up to the cap.
DEFAULT_MAX_RESOURCE_ID_BYTES = 1024
MAX_RESOURCE_ID_BYTES_CAP = 2048
MAX_GROUP_ID_BYTES = 1024
# A message key the Prefect messaging broker's cache keeps: a SHA-256 in hex,
# whatever the attribute's value.
SEEN_MESSAGE_KEY_CHARS = 64


def utf8_length(text: str) -> int:
    # isascii() is O(1) in CPython: no copy for the common case.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
