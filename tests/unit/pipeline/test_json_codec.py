"""`jsonb` as the worker's connections encode and decode it (`worker.pipeline.json_codec`)."""

from __future__ import annotations

import orjson

from worker.pipeline.json_codec import JSONB_VERSION, _jsonb_decode


def test_jsonb_is_the_json_bytes_behind_the_version_byte_both_ways() -> None:
    value = {"prefect.resource.id": "r", "name": "ünïcødé"}
    encoded = JSONB_VERSION + orjson.dumps(value)
    assert encoded[:1] == b"\x01"
    assert _jsonb_decode(encoded) == value
