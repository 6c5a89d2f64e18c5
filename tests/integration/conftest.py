"""One real Kafka broker and one real PostgreSQL server for the whole session."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.migrate import upgrade
from schemas.tables import metadata
from tests.integration.support import upgrade_async
from worker.core.settings import Settings
from worker.devtools.stack import LocalStack, StackInfo
from worker.pipeline.connections import create_engine
from worker.services.table_partitions import ensure_for


async def partitions_ahead(url: str) -> None:
    """What `persister migrate` does after the migrations on PostgreSQL."""
    engine = create_engine(url, pool_size=1)
    try:
        if engine.dialect.name == "postgresql":
            await ensure_for(engine, Settings(), datetime.now(UTC))
    finally:
        await engine.dispose()


async def only_partitions_ahead(url: str) -> None:
    """Drop every time partition (the tables are empty between tests) and
    make those `persister migrate` makes: a test that migrates from an old
    version leaves daily partitions 92 days back, which the retention tests,
    counting what a trim drops, must not find."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            found = await conn.execute(
                text(
                    "SELECT child.relname FROM pg_inherits"
                    " JOIN pg_class child ON child.oid = inhrelid"
                    " JOIN pg_class parent ON parent.oid = inhparent"
                    " WHERE parent.relname IN ('events', 'event_resources')"
                    " AND child.relname NOT LIKE '%default'"
                )
            )
            for name in found.scalars().all():
                await conn.execute(text(f'DROP TABLE "{name}"'))
    finally:
        await engine.dispose()
    await partitions_ahead(url)


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    with tempfile.TemporaryDirectory(prefix="persister-stack-") as tmp:
        stack = LocalStack(Path(tmp), database_url=os.environ.get("DATABASE_URL"))
        try:
            stack.start()
            upgrade(stack.info.database_url)
            asyncio.run(partitions_ahead(stack.info.database_url))
            yield stack
        finally:
            stack.stop()


@pytest.fixture(scope="session")
def stack_info(local_stack: LocalStack) -> StackInfo:
    return local_stack.info


async def emptied(url: str) -> AsyncEngine:
    engine = create_engine(url, pool_size=4)
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(metadata.tables)}"))
    return engine


@pytest.fixture
async def engine(stack_info: StackInfo) -> AsyncIterator[AsyncEngine]:
    """The PostgreSQL database, emptied before each test so counts are exact."""
    engine = await emptied(stack_info.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
async def any_engine(
    request: pytest.FixtureRequest, stack_info: StackInfo, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """Each dialect in turn: the session's PostgreSQL (emptied), or a new,
    migrated SQLite file. Tests taking it must hold on both."""
    if request.param == "postgresql":
        engine = await emptied(stack_info.database_url)
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'events.db'}"
        await upgrade_async(url)
        engine = create_engine(url, pool_size=4)
    yield engine
    await engine.dispose()
