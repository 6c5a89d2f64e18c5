"""The worker's connections write JSON bytes into `jsonb` and `json` columns,
and read every JSON value back as SQLAlchemy did (`worker.pipeline.json_codec`)."""

from __future__ import annotations

from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import orjson
import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, Table, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.devtools.stack import StackInfo

pytestmark = pytest.mark.integration

VALUES: list[Any] = [
    {"prefect.resource.id": "prefect.flow-run.1", "name": "ünïcødé ✓ 🚀"},
    [{"a": [1, 2.5, None, True]}, "x"],
    "a string",
    2**63 - 1,
    {},
    [],
    {"nested": {"deeper": {"deepest": [[[]]]}}},
]
documents = Table(
    "json_documents",
    MetaData(),
    Column("n", Integer),
    Column("b", JSONB),
    Column("j", JSON),
)


async def test_json_bytes_and_sqlalchemys_values_are_stored_as_postgresql_reads_them(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    direct = await asyncpg.connect(stack_info.direct_database_url.replace("+asyncpg", ""))
    try:
        await direct.execute("CREATE TABLE json_documents (n int, b jsonb, j json)")
        async with engine.begin() as conn:
            # Values through SQLAlchemy's JSON types (rows 0..), and the JSON
            # bytes the worker's rows carry, by COPY (rows 100..).
            await conn.execute(
                documents.insert(), [{"n": n, "b": v, "j": v} for n, v in enumerate(VALUES)]
            )
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.copy_records_to_table(
                "json_documents",
                records=[(n + 100, orjson.dumps(v), orjson.dumps(v)) for n, v in enumerate(VALUES)],
            )
            read = (await conn.execute(select(documents).order_by(documents.c.n))).all()
        # What PostgreSQL holds, as text, read by another client.
        stored = await direct.fetch("SELECT n, b::text, j::text FROM json_documents ORDER BY n")
    finally:
        await direct.execute("DROP TABLE IF EXISTS json_documents")
        await direct.close()
    expected = [*enumerate(VALUES), *((n + 100, v) for n, v in enumerate(VALUES))]
    assert [(n, b, j) for n, b, j in read] == [(n, v, v) for n, v in expected]
    assert [(n, orjson.loads(b), orjson.loads(j)) for n, b, j in stored] == [
        (n, v, v) for n, v in expected
    ]
