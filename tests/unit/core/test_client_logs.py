"""The client library's repeated lines: one WARNING each, one line when cleared."""

from __future__ import annotations

import logging

import pytest

from worker.core import metrics
from worker.core.client_logs import CollapsingHandler


def test_a_flood_is_one_warning_and_one_cleared_line(caplog: pytest.LogCaptureFixture) -> None:
    handler = CollapsingHandler(quiet_s=30)
    client = logging.getLogger("aiokafka.test")
    client.propagate = False
    client.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="worker.core.conditions"):
            for attempt in range(500):
                client.error("Unable connect to node with id %d: refused", attempt % 3)
            client.warning("Heartbeat failed for group g because it is rebalancing")
            assert metrics.conditions.labels("kafka_client")._value.get() == 2
            handler.sweep(now=float("inf"))
    finally:
        client.removeHandler(handler)
    repeats = "(repeats are not logged; a line follows when it has not been seen for 30 s)"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"Kafka client: Unable connect to node with id 0: refused {repeats}"),
        (
            "WARNING",
            f"Kafka client: Heartbeat failed for group g because it is rebalancing {repeats}",
        ),
        (
            "INFO",
            "Kafka client: cleared after 500 times in 0 s: Unable connect to node with id 0: "
            "refused",
        ),
        (
            "INFO",
            "Kafka client: cleared after 1 times in 0 s: Heartbeat failed for group g because "
            "it is rebalancing",
        ),
    ]
    assert metrics.conditions.labels("kafka_client")._value.get() == 0
