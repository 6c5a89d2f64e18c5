"""Alembic environment: online migrations over the async engine, with the
worker's own version table (see `schemas.sharing`)."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from schemas.sharing import VERSION_TABLE, prepare
from schemas.tables import metadata


def _migrate(connection: Connection) -> None:
    attributes = context.config.attributes
    ours = {script.revision for script in context.script.walk_revisions()}
    # In the migrations' transaction: a refusal changes nothing.
    prepare(connection, attributes.get("event_tables", "persister"), ours)
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run() -> None:
    engine = create_async_engine(context.config.attributes["database_url"])
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_migrate)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_run())
