"""A stand-in for a Kafka record, for tests that build batches by hand."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Msg:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp: int = 1_780_000_000_000


def msgs(
    values: list[bytes | None], topic: str = "t", partition: int = 0, first: int = 0
) -> list[Msg]:
    return [Msg(topic, partition, first + i, v) for i, v in enumerate(values)]
