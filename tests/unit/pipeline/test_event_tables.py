"""Which event tables the worker can write (`worker.pipeline.event_tables`)."""

from __future__ import annotations

from worker.pipeline.event_tables import WRITTEN, column_problem, kind_problem

# Prefect's `events` as its migrations make it: name -> needs a value.
PREFECT_EVENTS = {name: name != "follows" for name in WRITTEN["events"]} | {
    "created": False,
    "updated": False,
}


def test_the_worker_writes_every_column_prefect_requires() -> None:
    assert "recorded" in WRITTEN["events"]
    assert column_problem("events", PREFECT_EVENTS, WRITTEN["events"]) is None


def test_a_required_column_the_worker_does_not_fill_is_named() -> None:
    columns = PREFECT_EVENTS | {"flavour": True, "colour": True, "size": False}
    assert column_problem("events", columns, WRITTEN["events"]) == (
        "events.colour, flavour needs a value the persister does not write"
    )


def test_a_missing_column_is_named() -> None:
    columns = {k: v for k, v in PREFECT_EVENTS.items() if k not in ("recorded", "follows")}
    assert column_problem("events", columns, WRITTEN["events"]) == (
        "events has no column follows, recorded"
    )


def test_the_kind_of_table_must_be_the_one_the_setting_names() -> None:
    assert kind_problem("persister", partitioned=True) is None
    assert kind_problem("prefect", partitioned=False) is None
    assert "PERSISTER_EVENT_TABLES=prefect" in (kind_problem("persister", False) or "")
    assert "not Prefect's" in (kind_problem("prefect", True) or "")
