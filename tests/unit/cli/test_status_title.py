"""`persister status` titles its table with the group and the state Kafka
gives it; no empty parentheses when Kafka gives none."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from worker.operate.status import Status
from worker.operate.status_view import status_table


def title_line(state: str) -> str:
    status = Status("event-persister", state, [], [], None, 0)
    out = io.StringIO()
    Console(file=out, width=100).print(status_table(status))
    return out.getvalue().splitlines()[0].strip()


@pytest.mark.parametrize(
    ("state", "title"),
    [("Stable", "group 'event-persister' (Stable)"), ("", "group 'event-persister'")],
    ids=["a-state", "no-state"],
)
def test_the_title_names_the_group_and_its_state(state: str, title: str) -> None:
    assert title_line(state) == title
