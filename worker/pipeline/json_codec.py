"""`jsonb` and `json` values on the worker's PostgreSQL connections, written
as the JSON bytes they already are.

The rows carry their JSON columns as UTF-8 JSON bytes (orjson's output, see
`worker.pipeline.decoding`), and the engine serialises every other JSON value
with orjson too. PostgreSQL's binary `jsonb` is that text behind a version
byte: the encoder is `bytes.__add__` on that byte, with no Python call, where
SQLAlchemy's own codec decodes, encodes and prefixes each value in Python
(about 0.1 µs, several times per event). Reading is as before: each value
parsed by orjson.
"""

from __future__ import annotations

from typing import Any

import orjson

JSONB_VERSION = b"\x01"


def _jsonb_decode(value: bytes) -> Any:
    return orjson.loads(memoryview(value)[1:])


async def install(connection: Any) -> None:
    """Use these codecs on an asyncpg connection (after SQLAlchemy's own)."""
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=JSONB_VERSION.__add__,
        decoder=_jsonb_decode,
        format="binary",
    )
    # `json` is the text itself: a bytes value is written as it is.
    await connection.set_type_codec(
        "json", schema="pg_catalog", encoder=bytes, decoder=orjson.loads, format="binary"
    )
