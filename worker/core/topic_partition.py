"""The worker's key for one partition of one topic.

A plain (topic, partition) pair, the one type for it everywhere; aiokafka's
`TopicPartition` appears only in calls to the Kafka client."""

from __future__ import annotations

TP = tuple[str, int]
