"""A batch's events are keyed as the table is, by (id, occurred)."""

from __future__ import annotations

from datetime import timedelta

from tests.rows import events_of, resources_of
from tests.unit.pipeline.test_decoding import ID_A, LIMITS, MAX, OCCURRED, raw, record, rel
from worker.pipeline.decoding import to_rows


def test_the_same_id_with_another_occurred_is_another_event_row() -> None:
    """The table's key is (id, occurred): as in two batches, both are rows,
    each with its own resource rows; the same instant in another zone is the
    same key."""
    later = "2026-01-02T04:04:05Z"
    records = [
        record(raw(ID_A, related=[rel("x", "tag")]), offset=0),
        record(raw(ID_A, occurred=later, related=[rel("y", "tag")]), offset=1),
        record(raw(ID_A, occurred="2026-01-02T05:04:05+02:00"), offset=2),
    ]
    rows = to_rows(records, LIMITS, MAX)
    moved = OCCURRED + timedelta(hours=1)
    assert [(e["id"], e["occurred"]) for e in events_of(rows)] == [(ID_A, OCCURRED), (ID_A, moved)]
    resources = resources_of(rows)
    assert {key: [r["resource_id"] for r in found] for key, found in resources.items()} == {
        (ID_A, OCCURRED): ["prefect.flow-run.1", "x"],
        (ID_A, moved): ["prefect.flow-run.1", "y"],
    }
    assert [r["occurred"] for r in resources[(ID_A, moved)]] == [moved, moved]
    assert {key: r.offset for key, r in rows.sources.items()} == {
        (ID_A, OCCURRED): 0,
        (ID_A, moved): 1,
    }
