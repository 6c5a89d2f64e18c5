"""What a failed fetch means, and for which partitions. Pure: reads the
exception, decides nothing else.

- RETRY: the broker is unreachable or a leader is moving; the client heals
  it, so fetching simply goes on.
- OUT_OF_RANGE: the offset fetched from is not in the log (the topic was
  recreated, its log truncated, or records deleted by retention before they
  were stored); the partition is repositioned by one rule (see
  `worker.pipeline.fetching`).
- UNPOSITIONED: the client lost a partition's position; it is sought again
  to the stored offset.
- STOP: waiting will not heal it (a batch that cannot be decoded: missing
  codec, CRC mismatch, unknown record format; a record larger than the fetch
  size; no authorisation to read). The partition at fault stops loudly and is
  retried now and then; the others go on.
"""

from __future__ import annotations

from enum import Enum

from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)

from worker.core.topic_partition import TP


class FetchErrorKind(Enum):
    RETRY = "retry"
    OUT_OF_RANGE = "out_of_range"
    UNPOSITIONED = "unpositioned"
    STOP = "stop"


def kind_of(exc: KafkaError) -> FetchErrorKind:
    if isinstance(exc, OffsetOutOfRangeError):
        return FetchErrorKind.OUT_OF_RANGE
    if isinstance(exc, NoOffsetForPartitionError):
        return FetchErrorKind.UNPOSITIONED
    if getattr(exc, "retriable", False):
        return FetchErrorKind.RETRY
    return FetchErrorKind.STOP


def named_partitions(exc: KafkaError, owned: set[TP]) -> dict[TP, int | None]:
    """The partitions an error names (those of `owned`), with the offset it
    names for each when it does. Empty when it names none: an error raised
    while decoding a fetched batch says nothing of where it came from."""
    args = exc.args
    found: dict[TP, int | None] = {}
    if isinstance(exc, OffsetOutOfRangeError) and args and isinstance(args[0], dict):
        found = {(tp.topic, tp.partition): offset for tp, offset in args[0].items()}
    elif isinstance(exc, NoOffsetForPartitionError) and args:
        found = {_tp(args[0]): None} if isinstance(args[0], TopicPartition) else {}
    elif isinstance(exc, RecordTooLargeError) and len(args) >= 3:
        if isinstance(args[1], TopicPartition) and isinstance(args[2], int):
            found = {_tp(args[1]): args[2]}
    elif isinstance(exc, TopicAuthorizationFailedError) and args:
        found = {tp: None for tp in owned if tp[0] == args[0]}
    return {tp: offset for tp, offset in found.items() if tp in owned}


def _tp(tp: TopicPartition) -> TP:
    return (tp.topic, tp.partition)


def describe(exc: BaseException) -> str:
    """The error as one line: its class and the first line of its message."""
    name = type(exc).__name__
    text = (str(exc).strip().splitlines() or [""])[0]
    # aiokafka's errors often start with their own name, or a code and it.
    text = text.split(f"{name}: ", 1)[-1] if name in text else text
    return f"{name}: {text}" if text and text != name else name
