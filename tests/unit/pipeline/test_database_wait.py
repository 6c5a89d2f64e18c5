"""What the start-up look at the database refuses, and in which words
(`worker.pipeline.database_wait.refusal`)."""

from __future__ import annotations

from worker.pipeline.database_wait import PERSISTER_NEEDS, Findings, refusal, waits_for

WHERE = "postgresql://ro:***@db:5432/events"


def test_nothing_missing_nothing_lacking_starts() -> None:
    assert refusal(Findings(role="persister"), "persister", WHERE) is None


def test_a_missing_table_of_its_own_is_refused_with_the_hint() -> None:
    found = Findings(role="p", missing=["persister_consumer_offsets", "persister_dead_letters"])
    assert refusal(found, "prefect", WHERE) == (
        f"database {WHERE} has no table persister_consumer_offsets, persister_dead_letters; "
        "run `persister migrate`"
    )


def test_prefects_tables_missing_are_waited_for_beside_prefect_only() -> None:
    found = Findings(role="p", missing=["events", "event_resources"])
    assert refusal(found, "prefect", WHERE) is None
    assert refusal(found, "persister", WHERE) == (
        f"database {WHERE} has no table events, event_resources; run `persister migrate`"
    )
    assert waits_for("events", "prefect") and not waits_for("events", "persister")
    assert not waits_for("persister_consumer_offsets", "prefect")


def test_each_lacking_privilege_is_named_with_its_table() -> None:
    found = Findings(
        role="ro",
        lacking={"persister_consumer_offsets": ["INSERT", "UPDATE"], "events": ["INSERT"]},
    )
    assert refusal(found, "persister", WHERE, "PERSISTER_DATABASE_URL") == (
        f'database {WHERE} refused: role "ro" lacks INSERT, UPDATE on '  # noqa: S608
        "persister_consumer_offsets; INSERT on events; grant them, or set "
        "PERSISTER_DATABASE_URL to a role that has them"
    )


def test_a_missing_table_is_said_before_privileges() -> None:
    found = Findings(role="ro", missing=["persister_dead_letters"], lacking={"events": ["INSERT"]})
    assert "has no table persister_dead_letters" in (refusal(found, "persister", WHERE) or "")


def test_the_persister_needs_to_write_its_bookkeeping_and_the_events() -> None:
    assert PERSISTER_NEEDS["persister_consumer_offsets"] == ("SELECT", "INSERT", "UPDATE")
    assert PERSISTER_NEEDS["events"] == ("SELECT", "INSERT")
    assert PERSISTER_NEEDS["event_resources"] == ("SELECT", "INSERT")
