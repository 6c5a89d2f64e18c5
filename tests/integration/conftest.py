"""One real Kafka broker and one real PostgreSQL server for the whole session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.migrate import upgrade
from worker.stack import LocalStack, StackInfo
from worker.storage import create_engine


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    with tempfile.TemporaryDirectory(prefix="persister-stack-") as tmp:
        stack = LocalStack(Path(tmp), database_url=os.environ.get("DATABASE_URL"))
        try:
            stack.start()
            upgrade(stack.info.database_url)
            yield stack
        finally:
            stack.stop()


@pytest.fixture(scope="session")
def stack_info(local_stack: LocalStack) -> StackInfo:
    return local_stack.info


@pytest.fixture
async def engine(stack_info: StackInfo) -> AsyncIterator[AsyncEngine]:
    """The database, emptied before each test so counts are exact."""
    engine = create_engine(stack_info.database_url, pool_size=4)
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE events, event_resources, consumer_offsets, dead_letters"))
    yield engine
    await engine.dispose()
