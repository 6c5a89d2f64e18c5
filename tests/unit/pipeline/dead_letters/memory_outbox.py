"""The dead-letter table as the sender's tests keep it: in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core.settings import Settings
from worker.pipeline.dead_letters.sender import DeadLetterPublisher
from worker.pipeline.dead_letters.topic import Target


class MemoryOutbox(DeadLetterPublisher):
    """`rows` are the unmarked dead letters, one page of them; the topic has
    one partition."""

    def __init__(self) -> None:
        super().__init__(Settings(), cast(AsyncEngine, None))
        self.rows: list[SimpleNamespace] = []

    async def _pages(self, tp: tuple[str, int]) -> AsyncIterator[list[Row[Any]]]:
        if self.rows:
            yield cast(list[Row[Any]], list(self.rows))

    async def _mark(self, ids: list[int]) -> None:
        self.rows = [row for row in self.rows if row.id not in ids]

    async def _target(self, topic: str) -> Target:
        return Target(partitions=1, limit=1_000_000)
