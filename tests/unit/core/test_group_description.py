"""How a consumer group's description is read (`KafkaView.describe`): a
coordinator that is moving is asked again, never read as a group with no
state and no members."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from worker.core import kafka_admin
from worker.core.kafka_admin import GROUP_ID_NOT_FOUND, KafkaView
from worker.core.settings import Settings

NOT_COORDINATOR = 16


@dataclass
class Answer:
    groups: list[tuple[Any, ...]]


@dataclass
class Admin:
    """Answers `describe_consumer_groups` with one prepared answer per call."""

    answers: list[Answer]
    calls: int = 0
    asked: list[list[str]] = field(default_factory=list)

    async def describe_consumer_groups(self, groups: list[str]) -> list[Answer]:
        self.asked.append(groups)
        self.calls += 1
        return [self.answers.pop(0)]


def view(admin: Admin) -> KafkaView:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:9", topics=["events"])
    return KafkaView(settings, admin, None)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_admin, "RETRY_BASE_S", 0.0)
    monkeypatch.setattr(kafka_admin, "RETRY_CAP_S", 0.0)


async def test_a_moving_coordinator_is_asked_again() -> None:
    admin = Admin(
        [
            Answer([(NOT_COORDINATOR, "g", "", "", "", [])]),
            Answer([(0, "g", "Empty", "consumer", "", [])]),
        ]
    )
    group = await view(admin).describe("g")
    assert (group.state, group.members, admin.calls) == ("Empty", [], 2)


async def test_a_group_kafka_does_not_know_is_dead() -> None:
    admin = Admin([Answer([(GROUP_ID_NOT_FOUND, "g", "", "", "", [])])])
    group = await view(admin).describe("g")
    assert (group.state, group.members, admin.calls) == ("Dead", [], 1)
