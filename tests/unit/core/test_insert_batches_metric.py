"""`persister_insert_batches_total`: batches written by INSERT instead of COPY."""

from __future__ import annotations

from worker.core import metrics


def insert_batches() -> float:
    return metrics.registry.get_sample_value("persister_insert_batches_total") or 0.0


def test_only_batches_written_by_insert_are_counted() -> None:
    before = insert_batches()
    metrics.observe_batch(10, 10, 20, (), 0.01, None, inserted=True)
    metrics.observe_batch(10, 10, 20, (), 0.01, None)
    assert insert_batches() == before + 1
