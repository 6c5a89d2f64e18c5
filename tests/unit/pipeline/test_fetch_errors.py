"""What a failed fetch means, and which partitions it names."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    KafkaConnectionError,
    KafkaError,
    NoOffsetForPartitionError,
    NotLeaderForPartitionError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
    UnsupportedCodecError,
)

from worker.pipeline.fetch_errors import FetchErrorKind, describe, kind_of, named_partitions

OWNED = {("events", 0), ("events", 1), ("other", 0)}


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (KafkaConnectionError("no broker"), FetchErrorKind.RETRY),
        (NotLeaderForPartitionError(), FetchErrorKind.RETRY),
        (UnknownTopicOrPartitionError(), FetchErrorKind.RETRY),
        (OffsetOutOfRangeError({TopicPartition("events", 0): 5}), FetchErrorKind.OUT_OF_RANGE),
        (NoOffsetForPartitionError(TopicPartition("events", 0)), FetchErrorKind.UNPOSITIONED),
        (UnsupportedCodecError("no snappy"), FetchErrorKind.STOP),
        (CorruptRecordException("Invalid CRC"), FetchErrorKind.STOP),
        (RecordTooLargeError("too large"), FetchErrorKind.STOP),
        (TopicAuthorizationFailedError("events"), FetchErrorKind.STOP),
        (KafkaError("something new"), FetchErrorKind.STOP),
    ],
)
def test_kinds(error: KafkaError, kind: FetchErrorKind) -> None:
    assert kind_of(error) is kind


def test_out_of_range_names_its_partitions_and_offsets() -> None:
    error = OffsetOutOfRangeError({TopicPartition("events", 1): 42, TopicPartition("gone", 0): 1})
    assert named_partitions(error, OWNED) == {("events", 1): 42}


def test_a_record_too_large_names_its_partition_and_offset() -> None:
    error = RecordTooLargeError("at %s=%s", TopicPartition("events", 0), 7, 1024)
    assert named_partitions(error, OWNED) == {("events", 0): 7}


def test_no_authorisation_names_every_partition_of_the_topic() -> None:
    named = named_partitions(TopicAuthorizationFailedError("events"), OWNED)
    assert named == {("events", 0): None, ("events", 1): None}


def test_no_offset_names_its_partition() -> None:
    error = NoOffsetForPartitionError(TopicPartition("other", 0))
    assert named_partitions(error, OWNED) == {("other", 0): None}


def test_a_decoding_error_names_nothing() -> None:
    assert named_partitions(UnsupportedCodecError("no lz4"), OWNED) == {}
    assert named_partitions(CorruptRecordException("Invalid CRC - tp"), OWNED) == {}


def test_describe_is_one_line() -> None:
    assert describe(UnsupportedCodecError("no lz4\nmore")) == "UnsupportedCodecError: no lz4"
    assert describe(KafkaError()) == "KafkaError"
    corrupt = CorruptRecordException("Invalid CRC - events[0]")
    assert describe(corrupt) == "CorruptRecordException: Invalid CRC - events[0]"
